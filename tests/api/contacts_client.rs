//! `Contacts` in bgs mode against the fake BGS over real HTTP (SPEC §5, BGS.md).

use std::time::Duration;

use ebg_notify::config::Config;
use ebg_notify::contacts::{Contact, ContactError, Contacts};
use ebg_testkit::FakeBgs;
use ebg_testkit::bgs::BgsReply;

const PID: &str = "600043201";

fn contacts_at(bgs_url: &str, extra: &[(&str, &str)]) -> Contacts {
    let base = [("EBG_CONTACTS__MODE", "bgs"), ("EBG_CONTACTS__BGS_URL", bgs_url)];
    let env = base.iter().chain(extra).map(|(k, v)| (k.to_string(), v.to_string()));
    let config = Config::load_from(env).expect("test configuration loads");
    Contacts::from_config(&config.contacts).expect("bgs contacts build")
}

fn contacts_for(fake: &FakeBgs) -> Contacts {
    contacts_at(&fake.base_url(), &[])
}

fn named(first_name: &str) -> Result<Contact, ContactError> {
    Ok(Contact { first_name: first_name.to_owned() })
}

#[tokio::test]
async fn found_person_gets_a_capitalized_first_name_over_the_bgs_wire_format() {
    let fake = FakeBgs::start().await;
    fake.add_person(PID, "MARY ANN");
    let contacts = contacts_at(&fake.base_url(), &[("EBG_CONTACTS__BGS_HOST_HEADER", "prod.vba.va.gov")]);

    assert_eq!(contacts.lookup(PID).await, named("Mary ann"));

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.header("soapaction"), Some("\"findPersonByPtcpntId\""));
    assert_eq!(request.header("content-type"), Some("text/xml;charset=UTF-8"));
    assert_eq!(request.header("host"), Some("prod.vba.va.gov"));
    let parsed = request.parsed.as_ref().expect("the fake BGS accepted the request");
    assert_eq!(parsed.participant_id, PID);
    assert_eq!(parsed.username, "VAgovAPI");
    let header = |name: &str| parsed.va_service_headers.get(name).map(String::as_str);
    assert_eq!(header("STN_ID"), Some("281"));
    assert_eq!(header("applicationName"), Some("VAgovAPI"));
    assert_eq!(header("CLIENT_MACHINE"), Some("127.0.0.1"));
    assert_eq!(header("ExternalUid"), Some(PID));
    assert_eq!(header("ExternalKey"), Some(PID));
}

#[tokio::test]
async fn a_cached_contact_makes_no_second_request() {
    let fake = FakeBgs::start().await;
    fake.add_person(PID, "wesley");
    let contacts = contacts_for(&fake);

    assert_eq!(contacts.lookup(PID).await, named("Wesley"));
    // A clone shares the cache, as the workers do.
    assert_eq!(contacts.clone().lookup(PID).await, named("Wesley"));
    assert_eq!(fake.lookups_for(PID), 1);
}

#[tokio::test]
async fn concurrent_lookups_of_one_participant_make_one_request() {
    let fake = FakeBgs::start().await;
    fake.add_person(PID, "wesley");
    fake.script([BgsReply::Delay(Duration::from_millis(200))]);
    let contacts = contacts_for(&fake);

    let lookups = (0..8).map(|_| contacts.lookup(PID));
    let results = futures::future::join_all(lookups).await;

    assert!(results.iter().all(|r| r == &named("Wesley")));
    assert_eq!(fake.lookups_for(PID), 1);
}

#[tokio::test]
async fn not_found_is_cached_negatively() {
    let fake = FakeBgs::start().await;
    let contacts = contacts_for(&fake);

    assert_eq!(contacts.lookup(PID).await, Err(ContactError::NotFound));
    assert_eq!(contacts.lookup(PID).await, Err(ContactError::NotFound));
    assert_eq!(fake.lookups_for(PID), 1);
}

#[tokio::test]
async fn a_person_without_first_name_is_no_first_name_and_cached() {
    let fake = FakeBgs::start().await;
    fake.add_person_without_first_name(PID);
    let contacts = contacts_for(&fake);

    let result = contacts.lookup(PID).await;
    assert_eq!(result, Err(ContactError::NoFirstName));
    assert!(!result.unwrap_err().is_retryable());
    assert_eq!(contacts.lookup(PID).await, Err(ContactError::NoFirstName));
    assert_eq!(fake.lookups_for(PID), 1);
}

#[tokio::test]
async fn tuxedo_fault_is_transient_and_not_cached() {
    let fake = FakeBgs::start().await;
    fake.add_person(PID, "wesley");
    fake.script([BgsReply::TuxedoDown]);
    let contacts = contacts_for(&fake);

    let result = contacts.lookup(PID).await;
    assert_eq!(result, Err(ContactError::Transient("bgs_fault_transient")));
    assert!(result.unwrap_err().is_retryable());
    assert_eq!(contacts.lookup(PID).await, named("Wesley"));
    assert_eq!(fake.lookups_for(PID), 2);
}

#[tokio::test]
async fn other_faults_are_transient_with_their_own_labels() {
    let fake = FakeBgs::start().await;
    fake.script([BgsReply::WssVerification, BgsReply::UnknownFault, BgsReply::Garbage]);
    let contacts = contacts_for(&fake);

    assert_eq!(contacts.lookup(PID).await, Err(ContactError::Transient("bgs_fault_transient")));
    assert_eq!(contacts.lookup(PID).await, Err(ContactError::Transient("bgs_fault_other")));
    assert_eq!(contacts.lookup(PID).await, Err(ContactError::Transient("bgs_bad_response")));
}

#[tokio::test]
async fn logon_not_found_is_misconfigured_and_final() {
    let fake = FakeBgs::start().await;
    fake.add_person(PID, "wesley");
    fake.script([BgsReply::LogonNotFound]);
    let contacts = contacts_for(&fake);

    let result = contacts.lookup(PID).await;
    assert_eq!(result, Err(ContactError::Misconfigured("bgs_logon_not_found")));
    assert!(!result.unwrap_err().is_retryable());
    // Not cached either: once the configuration is fixed, lookups succeed.
    assert_eq!(contacts.lookup(PID).await, named("Wesley"));
}

#[tokio::test]
async fn a_slow_bgs_times_out_as_transient() {
    let fake = FakeBgs::start().await;
    fake.add_person(PID, "wesley");
    fake.script([BgsReply::Delay(Duration::from_secs(5))]);
    let contacts = contacts_at(&fake.base_url(), &[("EBG_CONTACTS__TIMEOUT_MS", "200")]);

    assert_eq!(contacts.lookup(PID).await, Err(ContactError::Transient("bgs_timeout")));
    assert_eq!(contacts.lookup(PID).await, named("Wesley"));
}

#[tokio::test]
async fn gateway_errors_are_transient() {
    let fake = FakeBgs::start().await;
    fake.script([BgsReply::Status503, BgsReply::Status(502), BgsReply::Status(504), BgsReply::Status(500)]);
    let contacts = contacts_for(&fake);

    for label in ["bgs_http_503", "bgs_http_502", "bgs_http_504", "bgs_http_500"] {
        assert_eq!(contacts.lookup(PID).await, Err(ContactError::Transient(label)));
    }
}

#[tokio::test]
async fn an_unreachable_bgs_is_a_transient_connect_error() {
    // Bind and release a port so nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    drop(listener);
    let contacts = contacts_at(&url, &[]);

    assert_eq!(contacts.lookup(PID).await, Err(ContactError::Transient("bgs_connect")));
}

#[tokio::test]
async fn the_fake_refuses_requests_bgs_would_refuse() {
    let fake = FakeBgs::start().await;
    let url = format!("{}/PersonWebServiceBean/PersonWebService", fake.base_url());
    let response = reqwest::Client::new()
        .post(&url)
        .header("Content-Type", "text/xml;charset=UTF-8")
        .header("SOAPAction", "findPersonByPtcpntId")
        .body("<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"/>")
        .send()
        .await
        .expect("the fake answers");

    assert_eq!(response.status(), 500);
    assert!(response.text().await.expect("body").contains("Unable to parse SOAP message"));
    assert!(fake.requests()[0].parsed.is_err());
}

#[tokio::test]
async fn sandbox_mode_never_calls_bgs() {
    let fake = FakeBgs::start().await;
    let env = [("EBG_CONTACTS__BGS_URL".to_owned(), fake.base_url())];
    let config = Config::load_from(env).expect("test configuration loads");
    let contacts = Contacts::from_config(&config.contacts).expect("sandbox contacts build");

    assert_eq!(contacts.lookup(PID).await, named("Veteran"));
    assert!(fake.requests().is_empty());
}
