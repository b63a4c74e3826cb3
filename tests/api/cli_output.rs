//! What a person reads: the real binary's startup and shutdown lines, its log hygiene (no colours
//! into a pipe, no sqlx notices, probes out of the info log), and the CLI verbs' output.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::helpers::*;

/// The binary with `env` on top of a test configuration for `database_url`, stdout and stderr piped
/// (so neither is a terminal).
fn binary(database_url: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ebg-notify"));
    cmd.env("EBG_DATABASE__URL", database_url)
        .env("EBG_HTTP__ADDR", "127.0.0.1:0")
        .env("EBG_TELEMETRY__LOG_FILTER", "info")
        .env("EBG_TELEMETRY__LOG_FORMAT", "pretty")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    binary(database_url, env).args(args).output().expect("the binary runs")
}

/// [`run`] off the test's runtime thread, so the fakes that runtime serves (MPI, VA Notify) answer the binary.
async fn run_beside_fakes(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let database_url = database_url.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&database_url, &args, &env)
    })
    .await
    .unwrap()
}

fn stdout_of(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test]
async fn serve_says_what_it_is_at_start_and_that_it_stopped() {
    // A password in the URL (trust auth ignores it) that must never reach the log.
    let database = TestDatabase::fresh();
    let mut url = url::Url::parse(&database.url).unwrap();
    url.set_password(Some("sekret-password")).unwrap();
    let name = url.path().trim_start_matches('/').to_owned();
    let mut child = KillOnDrop(binary(url.as_str(), &[]).arg("serve").spawn().unwrap());
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let started = loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(30)).expect("a startup line within 30 s");
        if line.contains("ebg-notify started") {
            break line;
        }
    };
    let addr = started.split_whitespace().find_map(|w| w.strip_prefix("addr=")).unwrap().to_owned();
    let client = reqwest::Client::new();
    // Ready follows the startup line once the workers hold their owner lock: an orchestrator polls, so do we.
    let ready = async {
        while !client.get(format!("http://{addr}/health/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready).await.expect("ready within 10 s of the startup line");
    for path in ["/health/live", "/health/ready", "/openapi.json"] {
        assert!(client.get(format!("http://{addr}{path}")).send().await.unwrap().status().is_success(), "{path}");
    }
    // SIGTERM, as an orchestrator stops it.
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    let rest: Vec<String> = lines_rx.try_iter().collect();
    let log = format!("{started}\n{}", rest.join("\n"));

    for field in [
        format!("version={}", env!("CARGO_PKG_VERSION")),
        "profile=local".to_owned(),
        format!("database=127.0.0.1:5432/{name}"),
        "va_notify=sandbox".to_owned(),
        "bgs=sandbox".to_owned(),
        "click_tracking=off".to_owned(),
    ] {
        assert!(started.contains(&field), "{field} in {started}");
    }
    let embedded = ebg_notify::db::MIGRATOR.iter().count();
    assert!(started.contains(&format!("migrations={embedded}/{embedded} applied")), "{started}");
    assert!(!log.contains("sekret-password"), "the database password never prints: {log}");
    assert!(!log.contains('\u{1b}'), "no colour codes into a pipe: {log:?}");
    assert!(!log.contains("_sqlx_migrations"), "no sqlx notices: {log}");
    assert!(log.lines().any(|l| l.contains("/openapi.json") && l.contains("finished processing request")), "{log}");
    assert!(!log.contains("/health/"), "probes log at debug, not info: {log}");
    assert!(rest.last().is_some_and(|l| l.contains("ebg-notify stopped")), "a final stopped line: {log}");
}

#[tokio::test]
async fn cli_verbs_are_quiet_and_readable() {
    let app = app().spawn().await;
    let db = app.database_url.clone();
    let env = [("USER", "tester")];

    // Every verb migrates first on the local profile: sqlx's "already exists" notice must not show.
    let output = run(&db, &["rollout", "list"], &env);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("_sqlx_migrations") && !stderr.contains("already exists"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    assert!(stdout_of(&output).contains("no rollout plans yet"), "an empty list says so");

    let audit = stdout_of(&run(&db, &["flags", "audit", "no_such_feature"], &env));
    assert_eq!(audit.trim(), "no audit entries for no_such_feature");

    let f = ebg_notify::toggles::EMAILS_ENABLED;
    stdout_of(&run(&db, &["flags", "percent", f, "2", "--reason", "canary"], &env));
    stdout_of(&run(&db, &["flags", "percent", f, "25", "--as", "alice"], &env));
    stdout_of(&run(&db, &["flags", "pause", f, "--reason", "call center reports"], &env));
    let audit = stdout_of(&run(&db, &["flags", "audit", f], &env));
    let lines: Vec<&str> = audit.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("ACTOR") && lines[0].contains("CHANGE"), "{audit}");
    assert!(lines[1].contains("paused no → yes") && lines[1].contains("call center reports"), "{audit}");
    assert!(lines[2].contains("percentage_of_actors 2 → 25") && lines[2].contains("cli:alice"), "{audit}");
    assert!(lines[3].contains("percentage_of_actors 0 → 2") && lines[3].contains("cli:tester"), "{audit}");
    assert!(!audit.contains('\t') && !audit.contains('{'), "aligned text, no JSON: {audit}");
    let column = lines[0].find("CHANGE").unwrap();
    assert!(lines[1..].iter().all(|l| l.char_indices().nth(column).is_some()), "{audit}");
    let change_at = |l: &str| l.chars().collect::<Vec<_>>()[column..].iter().collect::<String>();
    assert!(change_at(lines[1]).starts_with("paused"), "columns line up under the header: {audit}");
    assert!(change_at(lines[2]).starts_with("percentage_of_actors"), "{audit}");

    let help = stdout_of(&run(&db, &["simulate", "--help"], &env));
    assert!(help.contains("3 when it ended PAUSED"), "{help}");
    assert!(help.contains("--channels <CHANNELS>") && help.contains("[default: email]"), "{help}");
}

#[test]
fn simulate_refuses_an_unknown_channel_naming_the_option() {
    for channels in ["email,fax", "sms,sms", ""] {
        let output = run("postgres://127.0.0.1:1/never_used", &["simulate", "--channels", channels], &[]);
        assert!(!output.status.success(), "{channels}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--channels"), "{channels}: {stderr}");
        assert!(output.stdout.is_empty(), "refused before any simulation starts: {channels}");
    }
    let stderr =
        String::from_utf8_lossy(&run("postgres://127.0.0.1:1/x", &["simulate", "--channels", "fax"], &[]).stderr)
            .into_owned();
    assert!(stderr.contains("unknown channel `fax`") && stderr.contains("email, sms, push"), "{stderr}");
}

#[tokio::test]
async fn without_user_the_audit_actor_is_the_uids_login_name() {
    let app = app().spawn().await;
    let login = Command::new("id").arg("-un").output().unwrap();
    let login = String::from_utf8(login.stdout).unwrap().trim().to_owned();
    let mut cmd = binary(&app.database_url, &[]);
    cmd.env_remove("USER").args(["flags", "enable", ebg_notify::toggles::EMAILS_ENABLED]);
    stdout_of(&cmd.output().unwrap());
    let actor: String = sqlx::query_scalar("select actor from feature_audit order by id desc limit 1")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(actor, format!("cli:{login}"));
    assert_ne!(actor, "cli:unknown");
}

#[tokio::test]
async fn replay_reports_progress_on_stderr_and_requeues_each_row_once() {
    let (app, notify, bgs) = wired_app(&[]).await;
    bgs.add_person("600061743", "JOHN");
    notify.script([ebg_testkit::va_notify::Reply::BadRequest, ebg_testkit::va_notify::Reply::BadRequest]);
    let ids = [queue_for(&app, PARTICIPANT_ID).await, queue_for(&app, "600061743").await];
    app.deliver_all().await;
    assert_eq!(app.count("failed").await, 2);

    let dry = stdout_of(&run(&app.database_url, &["replay", "--status", "failed", "--dry-run"], &[]));
    assert_eq!(dry.trim(), "would requeue 2 notification(s) in state failed");
    let output = run(&app.database_url, &["replay", "--status", "failed"], &[]);
    assert_eq!(stdout_of(&output).trim(), "requeued 2 notification(s) in state failed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().any(|l| l.starts_with("replay [") && l.contains("2/2 2 requeued")), "{stderr}");
    assert!(!stderr.contains('\u{1b}') && !stderr.contains('\r'), "no bar without a terminal: {stderr:?}");
    for id in ids {
        assert_eq!(app.status_of(id).await, ("queued".to_owned(), Some("replayed".to_owned())));
    }
    let again = stdout_of(&run(&app.database_url, &["replay", "--status", "failed"], &[]));
    assert_eq!(again.trim(), "requeued 0 notification(s) in state failed");
}

#[tokio::test]
async fn release_from_the_cli_sends_suppressed_mail_once_and_says_so() {
    let app = app().spawn().await;
    assert_eq!(app.send_email(TEMPLATE_ID).await.status(), 200);
    assert_eq!(app.count("suppressed").await, 1, "the toggle is off");
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let flags = ["flags", "actor", "event_bus_gateway_emails_enabled", PARTICIPANT_ID, "--reason", "UAT"];
    stdout_of(&run(&app.database_url, &flags, &[]));

    let dry = stdout_of(&run(&app.database_url, &["release", "--from", &since, "--dry-run"], &[]));
    assert_eq!(
        dry.trim(),
        "would release 1 of 1 suppressed email notification(s); 0 still disabled, 0 covered by another send, 0 unresolved"
    );
    assert_eq!(app.count("suppressed").await, 1, "a dry run changes nothing");
    let output = run(&app.database_url, &["release", "--from", &since, "--reason", "after UAT"], &[]);
    assert_eq!(
        stdout_of(&output).trim(),
        "released 1 of 1 suppressed email notification(s); 0 still disabled, 0 covered by another send, 0 unresolved"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().any(|l| l.starts_with("release [") && l.ends_with("1 released")), "{stderr}");
    assert_eq!(app.count("queued").await, 1);
    let again = stdout_of(&run(&app.database_url, &["release", "--from", &since], &[]));
    assert!(again.starts_with("released 0 of 0"), "releasing twice sends once: {again}");
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from feature_audit where operation = 'release_suppressed' and reason = 'after UAT'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 1, "the release is audited with its reason");
}

#[tokio::test]
async fn release_from_the_cli_resolves_icns_through_mpi_for_sms_and_counts_who_it_could_not() {
    let w = wired().await;
    const FORGOTTEN: &str = "600070021";
    w.mpi.add_patient(FORGOTTEN, "1033333333V333333", Some("ANN"));
    for participant in [PARTICIPANT_ID, FORGOTTEN] {
        single(post(&w.app, SMS_PATH, participant, serde_json::json!({"template_id": SMS_TEMPLATE}), None).await).await;
    }
    w.app.deliver_all().await;
    assert_eq!(w.app.count("suppressed").await, 2, "the SMS toggle is off");
    let flags = ["flags", "actor", SMS_FEATURE, ICN, "--reason", "UAT"];
    stdout_of(&run(&w.app.database_url, &flags, &[]));
    // MPI no longer knows the second Veteran (GCID01); the CLI is a fresh process, with no cache.
    w.mpi.add_error(FORGOTTEN, "GCID01", ebg_testkit::mpi::ErrorForm::Severity);

    let mpi_env = w.mpi_env();
    let env: Vec<(&str, &str)> = mpi_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let args = ["release", "--feature", SMS_FEATURE, "--from", &since];
    let dry = stdout_of(&run_beside_fakes(&w.app.database_url, &[&args[..], &["--dry-run"]].concat(), &env).await);
    let line = "1 of 2 suppressed sms notification(s); 0 still disabled, 0 covered by another send, 1 unresolved \
                (person_not_found 1)";
    assert_eq!(dry.trim(), format!("would release {line}"));
    assert_eq!(stdout_of(&run_beside_fakes(&w.app.database_url, &args, &env).await).trim(), format!("released {line}"));
    // The CLI's toggle change reaches the app by NOTIFY; its worker decides the released SMS with it.
    w.app.state.toggles.refresh().await.unwrap();
    w.app.deliver_all().await;
    assert_eq!(w.notify.requests_to(ebg_testkit::va_notify::Endpoint::Sms).len(), 1, "once, to the resolved Veteran");
    assert_eq!(w.app.count("suppressed").await, 1, "the unresolved one stays suppressed");

    let again = stdout_of(&run_beside_fakes(&w.app.database_url, &args, &env).await);
    assert!(again.starts_with("released 0 of 1"), "releasing twice sends once: {again}");
    let not_a_gate = run(&w.app.database_url, &["release", "--feature", "no_such_feature", "--from", &since], &[]);
    assert!(!not_a_gate.status.success());
    assert!(String::from_utf8_lossy(&not_a_gate.stderr).contains("--feature"), "names the option");
}

#[tokio::test]
async fn retention_by_hand_deletes_old_rows_with_progress_and_keeps_recent_ones() {
    let app = app().spawn().await;
    let old = queue_for(&app, PARTICIPANT_ID).await;
    let recent = queue_for(&app, "600061743").await;
    sqlx::query("update notifications set status = 'delivered', created_at = '2020-01-01T00:00:00Z' where id = $1")
        .bind(old)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("update notifications set status = 'delivered' where id = $1")
        .bind(recent)
        .execute(&app.db)
        .await
        .unwrap();

    let output = run(&app.database_url, &["retention", "--days", "30"], &[]);
    assert_eq!(
        stdout_of(&output).trim(),
        "deleted 1 notification(s), 0 callback event(s), 0 click record(s) older than 30 days"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().any(|l| l.starts_with("retention [") && l.ends_with("1 deleted")), "{stderr}");
    let left: Vec<uuid::Uuid> = sqlx::query_scalar("select id from notifications").fetch_all(&app.db).await.unwrap();
    assert_eq!(left, vec![recent]);
}
