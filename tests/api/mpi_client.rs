//! `Mpi` in fhir mode against the fake MPI FHIR service over real mutual TLS (CHANNELS.md §2).

use std::time::Duration;

use ebg_notify::config::Config;
use ebg_notify::contacts::{Identity, Mpi, MpiError};
use ebg_testkit::mpi::{ErrorForm, MpiReply};
use ebg_testkit::{FakeMpi, TestPki};

const PID: &str = "600043201";
const ICN: &str = "1012345678V123456";
const SENDER: &str = "200ENTF";

fn config(url: &str, pki: &TestPki, extra: &[(&str, String)]) -> Config {
    let base = [
        ("EBG_MPI__MODE", "fhir".to_owned()),
        ("EBG_MPI__URL", url.to_owned()),
        ("EBG_MPI__SENDER_ID", SENDER.to_owned()),
        ("EBG_MPI__CLIENT_CERT_PATH", pki.client_cert_path().display().to_string()),
        ("EBG_MPI__CLIENT_KEY_PATH", pki.client_key_path().display().to_string()),
        ("EBG_MPI__CA_PATH", pki.ca_path().display().to_string()),
        ("EBG_MPI__TIMEOUT_MS", "1500".to_owned()),
    ];
    let env = base.iter().chain(extra).map(|(k, v)| (k.to_string(), v.clone()));
    Config::load_from(env).expect("test configuration loads")
}

fn mpi_with(fake: &FakeMpi, pki: &TestPki, extra: &[(&str, String)]) -> Mpi {
    Mpi::from_config(&config(&fake.base_url(), pki, extra).mpi).expect("fhir client builds")
}

fn found(icn: &str, first_name: Option<&str>) -> Result<Identity, MpiError> {
    Ok(Identity { icn: icn.to_owned(), first_name: first_name.map(str::to_owned) })
}

#[tokio::test]
async fn a_found_patient_yields_the_plain_icn_and_given_name_over_mutual_tls() {
    let pki = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    fake.add_patient(PID, ICN, Some("JANE"));

    assert_eq!(mpi_with(&fake, &pki, &[]).lookup(PID).await, found(ICN, Some("Jane")));

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].raw_target,
        format!("/psim_webservice/fhir/Patient/{PID}%5EPI%5E200CORP%5EUSVBA?-sender={SENDER}"),
        "carets percent-encoded, sender as `-sender`"
    );
    assert_eq!(requests[0].participant_id.as_deref(), Some(PID));
    assert!(requests[0].accept.as_deref().is_some_and(|a| a.contains("application/fhir+json")));
}

#[tokio::test]
async fn each_not_found_code_in_both_forms_is_not_found() {
    let pki = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    let mpi = mpi_with(&fake, &pki, &[]);
    let mut pid = 700_000_000u64;
    for code in ["GCID01", "557", "BR001"] {
        for form in [ErrorForm::Severity, ErrorForm::OperationOutcome] {
            pid += 1;
            fake.add_error(&pid.to_string(), code, form);
            assert_eq!(mpi.lookup(&pid.to_string()).await, Err(MpiError::NotFound), "{code} {form:?}");
        }
    }
    // A participant MPI has never heard of: GCID01 from the service itself.
    assert_eq!(mpi.lookup("799999999").await, Err(MpiError::NotFound));
    assert!(fake.requests().iter().all(|r| r.status == 200), "MPI reports these with HTTP 200");
}

#[tokio::test]
async fn other_codes_are_final_errors_in_both_forms() {
    let pki = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    let mpi = mpi_with(&fake, &pki, &[]);
    let mut pid = 710_000_000u64;
    for (code, label) in [("BRNOARG01", "mpi_error_brnoarg01"), ("556", "mpi_error_556"), ("ZZ999", "mpi_error_other")]
    {
        for form in [ErrorForm::Severity, ErrorForm::OperationOutcome] {
            pid += 1;
            fake.add_error(&pid.to_string(), code, form);
            let result = mpi.lookup(&pid.to_string()).await;
            assert_eq!(result, Err(MpiError::Rejected(label)), "{code} {form:?}");
            assert!(!result.unwrap_err().is_retryable());
        }
    }
}

#[tokio::test]
async fn a_deceased_patient_is_skipped_not_found() {
    let pki = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    fake.add_deceased(PID, ICN, "2024-03-01T00:00:00Z");
    let err = mpi_with(&fake, &pki, &[]).lookup(PID).await.unwrap_err();
    assert_eq!((err.clone(), err.reason(), err.is_skip()), (MpiError::Deceased, "deceased", true));
}

#[tokio::test]
async fn retryable_statuses_are_transient_uncached_and_recover() {
    let pki = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    fake.add_patient(PID, ICN, Some("JANE"));
    let statuses = [(503, "mpi_http_503"), (502, "mpi_http_502"), (500, "mpi_http_500"), (504, "mpi_http_504")];
    fake.script(statuses.iter().map(|(s, _)| MpiReply::Status(*s)).chain([MpiReply::Status(429)]));
    let mpi = mpi_with(&fake, &pki, &[]);

    for (_, label) in statuses.iter().copied().chain([(429, "mpi_http_429")]) {
        let err = mpi.lookup(PID).await.unwrap_err();
        assert_eq!(err, MpiError::Transient(label));
        assert!(err.is_retryable());
    }
    assert_eq!(mpi.lookup(PID).await, found(ICN, Some("Jane")), "recovers once MPI does");
    assert_eq!(fake.lookups_for(PID), 6, "failures are never cached");
}

#[tokio::test]
async fn other_http_errors_are_final_and_auth_errors_say_misconfigured() {
    let pki = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    fake.add_patient(PID, ICN, None);
    fake.script([MpiReply::Status(404), MpiReply::Status(501), MpiReply::Status(403)]);
    let mpi = mpi_with(&fake, &pki, &[]);
    assert_eq!(mpi.lookup(PID).await, Err(MpiError::Rejected("mpi_http_404")));
    assert_eq!(mpi.lookup(PID).await, Err(MpiError::Rejected("mpi_http_5xx")));
    assert_eq!(mpi.lookup(PID).await, Err(MpiError::Misconfigured("mpi_http_403")));
    assert_eq!(mpi.lookup(PID).await, found(ICN, None), "final errors are not cached either");
}

#[tokio::test]
async fn a_slow_mpi_times_out_as_transient() {
    let pki = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    fake.add_patient(PID, ICN, None);
    fake.script([MpiReply::Delay(Duration::from_millis(1500))]);
    let mpi = mpi_with(&fake, &pki, &[("EBG_MPI__TIMEOUT_MS", "300".to_owned())]);
    assert_eq!(mpi.lookup(PID).await, Err(MpiError::Transient("mpi_timeout")));
}

#[tokio::test]
async fn found_and_negative_answers_are_cached_and_lookups_coalesce() {
    let pki = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    fake.add_patient(PID, ICN, Some("JANE"));
    fake.add_deceased("600043202", "1012345678V000002", "2020-01-01");
    fake.script([MpiReply::Delay(Duration::from_millis(200))]);
    let mpi = mpi_with(&fake, &pki, &[("EBG_MPI__NEGATIVE_CACHE_TTL_SECONDS", "1".to_owned())]);

    let results = futures::future::join_all((0..8).map(|_| mpi.lookup(PID))).await;
    assert!(results.iter().all(|r| r == &found(ICN, Some("Jane"))));
    assert_eq!(mpi.clone().lookup(PID).await, found(ICN, Some("Jane")), "clones share the cache");
    assert_eq!(fake.lookups_for(PID), 1);

    assert_eq!(mpi.lookup("600043202").await, Err(MpiError::Deceased));
    assert_eq!(mpi.lookup("600043202").await, Err(MpiError::Deceased));
    assert_eq!(fake.lookups_for("600043202"), 1, "a negative answer is remembered");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(mpi.lookup("600043202").await, Err(MpiError::Deceased));
    assert_eq!(fake.lookups_for("600043202"), 2, "...for negative_cache_ttl_seconds");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_in_the_handshake() {
    let pki = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    fake.add_patient(PID, ICN, None);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca_path()).unwrap()).unwrap();
    let no_cert = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap();

    let url = format!("{}/psim_webservice/fhir/Patient/{PID}%5EPI%5E200CORP%5EUSVBA?-sender={SENDER}", fake.base_url());
    assert!(no_cert.get(url).send().await.is_err(), "no answer without a client certificate");

    assert!(fake.requests().is_empty());
    assert!(fake.handshakes_refused() >= 1);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_and_is_transient() {
    let pki = TestPki::generate();
    let stranger = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    fake.add_patient(PID, ICN, None);
    let extra = [
        ("EBG_MPI__CLIENT_CERT_PATH", stranger.client_cert_path().display().to_string()),
        ("EBG_MPI__CLIENT_KEY_PATH", stranger.client_key_path().display().to_string()),
    ];
    let err = mpi_with(&fake, &pki, &extra).lookup(PID).await.unwrap_err();
    assert!(matches!(err, MpiError::Transient(_)), "{err:?}");
    assert!(fake.requests().is_empty());
    assert!(fake.handshakes_refused() >= 1);
}

#[tokio::test]
async fn a_server_outside_the_configured_ca_is_not_trusted() {
    let pki = TestPki::generate();
    let other_ca = TestPki::generate();
    let fake = FakeMpi::start(&pki).await;
    fake.add_patient(PID, ICN, None);
    let extra = [("EBG_MPI__CA_PATH", other_ca.ca_path().display().to_string())];
    let err = mpi_with(&fake, &pki, &extra).lookup(PID).await.unwrap_err();
    assert!(matches!(err, MpiError::Transient(_)), "{err:?}");
    assert!(fake.requests().is_empty(), "nothing reached a server we do not trust");
}

#[tokio::test]
async fn unreadable_pem_files_are_a_startup_error_naming_the_keys() {
    let pki = TestPki::generate();
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a pem").unwrap();
    let extra = [
        ("EBG_MPI__CLIENT_KEY_PATH", garbage.display().to_string()),
        ("EBG_MPI__CA_PATH", garbage.display().to_string()),
    ];
    let cfg = config("https://127.0.0.1:1", &pki, &extra);
    let err = Mpi::from_config(&cfg.mpi).err().expect("refused").to_string();
    assert!(err.contains("mpi.client_key_path") && err.contains("mpi.ca_path"), "{err}");
    assert!(!err.contains("not a pem"), "file contents are never echoed: {err}");
}

#[tokio::test]
async fn sandbox_mode_answers_a_stable_icn_without_any_io() {
    let config = Config::load_from(Vec::new()).expect("defaults load");
    let mpi = Mpi::from_config(&config.mpi).expect("sandbox builds");
    let first = mpi.lookup(PID).await.expect("sandbox finds everyone");
    assert_eq!(mpi.lookup(PID).await.expect("again").icn, first.icn);
    assert_ne!(mpi.lookup("600043202").await.expect("other").icn, first.icn);
}
