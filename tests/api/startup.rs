//! The first hour, through the real binary: a private PostgreSQL when none runs, running from any
//! directory, and startup errors that name the cause once and say what to set.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// A directory under the system temp dir, removed (with whatever a private server left in it) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ebg-{label}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with none of the caller's `EBG_` settings, run from `cwd`.
fn binary(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ebg-notify"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("EBG_") || k == "DATABASE_URL") {
        cmd.env_remove(key);
    }
    cmd.current_dir(cwd).env("RUST_LOG", "warn").stdin(Stdio::null());
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A loopback URL where nothing listens (the port was free a moment ago), with a password that must
/// never be printed.
fn closed_url(database: &str) -> String {
    format!("postgres://postgres:hunter2@127.0.0.1:{}/{database}", free_port())
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// How a test stops `serve`.
#[derive(Clone, Copy)]
enum Stop {
    /// SIGTERM to the process, as an orchestrator does.
    Term,
    /// SIGINT to its whole process group, as Ctrl-C in a terminal does.
    CtrlC,
}

/// `serve` until /health/ready answers 200, checks it with `check`, then stops it; returns the exit output.
async fn serve_until_ready<F, Fut>(mut cmd: Command, stop: Stop, check: F) -> Output
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let port = free_port();
    if matches!(stop, Stop::CtrlC) {
        cmd.process_group(0);
    }
    let mut child = cmd
        .arg("serve")
        .env("EBG_HTTP__ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..600 {
        if client.get(format!("{base}/health/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if ready {
        check(base).await;
    }
    let pid = child.id() as i32;
    // SAFETY: signalling our own child (or the process group it leads) by id.
    match stop {
        Stop::Term => unsafe { libc::kill(pid, libc::SIGTERM) },
        Stop::CtrlC => unsafe { libc::kill(-pid, libc::SIGINT) },
    };
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(ready, "serve never became ready: {}", stderr(&output));
    output
}

fn postmaster_running(private_dir: &Path) -> bool {
    private_dir.join("data/postmaster.pid").exists()
}

#[tokio::test]
async fn with_a_server_present_no_private_server_is_started() {
    let database = TestDatabase::fresh();
    let private = TempDir::new("private-unused");
    let unused = private.path().join("pg");
    let output = binary(private.path())
        .arg("migrate")
        .env("EBG_DATABASE__URL", &database.url)
        .env("EBG_DATABASE__PRIVATE_DIR", &unused)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "migrations applied");
    assert!(!unused.exists(), "the configured server answered, so no private server was made");
}

#[tokio::test]
async fn without_a_server_the_local_profile_runs_a_private_one_kept_between_runs() {
    let private = TempDir::new("private-pg");
    let dir = private.path().join("postgres");
    let url = closed_url("ebg_notify");
    let with_private = |cmd: &mut Command| {
        cmd.env("EBG_DATABASE__URL", &url).env("EBG_DATABASE__PRIVATE_DIR", &dir);
    };

    let mut migrate = binary(private.path());
    with_private(migrate.arg("migrate"));
    let first = migrate.output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(dir.join("data/PG_VERSION").exists(), "the cluster lives in the named directory");
    assert!(!postmaster_running(&dir), "stopped when the command ended");

    // A second run reuses the cluster: the service starts on it, takes a request, and on Ctrl-C (which
    // reaches ebg-notify's process group, not the server's) drains and stops the server.
    let mut serve = binary(private.path());
    with_private(serve.env("RUST_LOG", "info"));
    let created = std::fs::metadata(dir.join("data/PG_VERSION")).unwrap().modified().unwrap();
    let (cwd, url, dir2) = (private.path().to_path_buf(), url.clone(), dir.clone());
    let output = serve_until_ready(serve, Stop::CtrlC, |base| async move {
        let r = reqwest::Client::new()
            .post(format!("{base}{SEND_EMAIL}"))
            .bearer_auth(token_for(PARTICIPANT_ID))
            .json(&json!({ "template_id": TEMPLATE_ID }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "recorded in the private database");
        // A CLI verb in another terminal joins the running server and leaves it running when it ends.
        let mut flags = binary(&cwd);
        flags.args(["flags", "list"]).env("EBG_DATABASE__URL", &url).env("EBG_DATABASE__PRIVATE_DIR", &dir2);
        let listed = tokio::task::spawn_blocking(move || flags.output().unwrap()).await.unwrap();
        assert!(listed.status.success(), "{}", stderr(&listed));
        assert!(String::from_utf8_lossy(&listed.stdout).contains("event_bus_gateway_emails_enabled"));
        let ready = reqwest::get(format!("{base}/health/ready")).await.unwrap();
        assert_eq!(ready.status(), 200, "the service's database is still there");
    })
    .await;
    assert!(output.status.success(), "clean exit on Ctrl-C: {}", stderr(&output));
    assert!(stderr(&output).contains("using a private server"), "{}", stderr(&output));
    assert!(!stderr(&output).contains("hunter2"), "never the password: {}", stderr(&output));
    assert_eq!(std::fs::metadata(dir.join("data/PG_VERSION")).unwrap().modified().unwrap(), created, "kept");
    assert!(!postmaster_running(&dir), "the private server stopped with the service");
}

#[tokio::test]
async fn without_a_server_or_postgresql_programs_one_line_says_what_to_do() {
    let empty = TempDir::new("no-programs");
    let dir = empty.path().join("postgres");
    let output = binary(empty.path())
        .arg("migrate")
        .env("PATH", empty.path())
        .env("EBG_DATABASE__POSTGRES_BIN_PATH", empty.path())
        .env("EBG_DATABASE__URL", closed_url("ebg_notify"))
        .env("EBG_DATABASE__PRIVATE_DIR", &dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert_eq!(text.trim().lines().count(), 1, "exactly one line: {text}");
    assert!(text.contains("apt-get install postgresql") && text.contains("EBG_DATABASE__URL"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!dir.exists(), "nothing was made");
}

#[tokio::test]
async fn a_database_on_another_host_is_never_replaced_by_a_private_one() {
    let empty = TempDir::new("remote");
    let dir = empty.path().join("postgres");
    let output = binary(empty.path())
        .arg("migrate")
        .env("EBG_DATABASE__URL", "postgres://postgres:hunter2@db.invalid:5432/ebg_notify")
        .env("EBG_DATABASE__PRIVATE_DIR", &dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("could not connect to PostgreSQL at db.invalid:5432/ebg_notify"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!dir.exists(), "an outage elsewhere is reported, not papered over");
}

#[tokio::test]
async fn production_never_starts_a_private_server() {
    let empty = TempDir::new("production");
    let output = binary(empty.path())
        .arg("migrate")
        .env("EBG_PROFILE", "production")
        .env("EBG_DATABASE__URL", closed_url("ebg_notify"))
        .env("EBG_DATABASE__PRIVATE_SERVER", "true")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("database.private_server: production never starts its own database"));
}

#[tokio::test]
async fn runs_from_any_directory_with_the_embedded_development_keys() {
    let elsewhere = TempDir::new("cwd");
    let token = binary(elsewhere.path()).args(["token", "--participant-id", PARTICIPANT_ID]).output().unwrap();
    assert!(token.status.success(), "{}", stderr(&token));
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let database = TestDatabase::fresh();
    let mut serve = binary(elsewhere.path());
    serve.env("EBG_DATABASE__URL", &database.url);
    let output = serve_until_ready(serve, Stop::Term, |base| async move {
        let r = reqwest::Client::new()
            .post(format!("{base}{SEND_EMAIL}"))
            .bearer_auth(&token)
            .json(&json!({ "template_id": TEMPLATE_ID }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the binary's own token is accepted by the binary's service");
    })
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn an_unreachable_database_is_named_once_with_the_fix() {
    let empty = TempDir::new("unreachable");
    let url = closed_url("ebg_somewhere");
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap().to_owned();
    let output = binary(empty.path())
        .arg("migrate")
        .env("EBG_DATABASE__URL", &url)
        .env("EBG_DATABASE__PRIVATE_SERVER", "false")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains(&format!("127.0.0.1:{port}/ebg_somewhere")), "{text}");
    assert!(text.contains("is PostgreSQL running? set EBG_DATABASE__URL"), "{text}");
    assert_eq!(text.matches("refused").count(), 1, "each cause once: {text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_taken_port_fails_first_and_names_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let empty = TempDir::new("taken-port");
    let output = binary(empty.path())
        .env("EBG_HTTP__ADDR", addr.to_string())
        .env("EBG_DATABASE__URL", closed_url("ebg_notify"))
        .env("EBG_DATABASE__PRIVATE_SERVER", "false")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains(&format!("could not listen on {addr}")) && text.contains("set EBG_HTTP__ADDR"), "{text}");
    assert!(!text.contains("PostgreSQL"), "the port is checked before the database: {text}");
    assert_eq!(text.matches("in use").count(), 1, "{text}");
}

#[tokio::test]
async fn every_configuration_problem_is_listed_with_its_source() {
    let dir = TempDir::new("config");
    let file = dir.path().join("ebg.toml");
    std::fs::write(&file, "[retention]\ndays = \"forever\"\n[worker]\nconcurency = 3\n").unwrap();
    let output = binary(dir.path())
        .args(["token", "--participant-id", PARTICIPANT_ID])
        .env("EBG_CONFIG_FILE", &file)
        .env("EBG_WORKER__CONCURRENCY", "eight")
        .env("EBG_NOTIFY__MODE", "real")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    for needle in [
        "EBG_WORKER__CONCURRENCY: expected a whole number (0 or more), found text",
        "EBG_NOTIFY__MODE: expected one of `live`, `sandbox`",
        &format!("`retention.days` in {}: expected a whole number from 0 to 4294967295", file.display()),
        "`worker.concurency` is not a configuration setting and is ignored (did you mean `worker.concurrency`?)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("figment") && !text.contains("alloc::"), "{text}");
}

#[tokio::test]
async fn a_bad_address_or_duration_stops_startup_naming_the_setting() {
    let dir = TempDir::new("config-typed");
    let output = binary(dir.path())
        .args(["token", "--participant-id", PARTICIPANT_ID])
        .env("EBG_HTTP__ADDR", "localhost:3000")
        // Too large for a PostgreSQL interval: this used to become no duplicate window at all.
        .env("EBG_ACCEPT__DUPLICATE_WINDOW_SECONDS", u64::MAX.to_string())
        .env("EBG_WORKER__POLL_INTERVAL_MS", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    for needle in [
        "EBG_HTTP__ADDR: expected host:port, e.g. 0.0.0.0:3000, found text",
        "accept.duplicate_window_seconds: must be from 0 to 604800",
        "worker.poll_interval_ms: must be from 1 to 3600000",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("localhost:3000"), "values are never echoed: {text}");
}

/// The `scopes` claim of a JWT printed by `ebg-notify token`.
fn printed_scopes(output: &std::process::Output) -> Vec<String> {
    use base64::Engine;
    assert!(output.status.success(), "{}", stderr(output));
    let token = String::from_utf8(output.stdout.clone()).unwrap();
    let claims = token.trim().split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    serde_json::from_value(claims["scopes"].clone()).unwrap()
}

#[tokio::test]
async fn token_mints_the_scopes_asked_for_and_refuses_unknown_ones() {
    let dir = TempDir::new("scopes");
    let token = |extra: &[&str]| {
        let mut args = vec!["token", "--participant-id", PARTICIPANT_ID];
        args.extend_from_slice(extra);
        binary(dir.path()).args(args).output().unwrap()
    };
    let url = |action: &str| format!("http://localhost:3000/v0/event_bus_gateway/{action}");

    assert_eq!(printed_scopes(&token(&[])), [url("send_email")], "send_email by default");
    assert_eq!(
        printed_scopes(&token(&[
            "--scope",
            "send_sms",
            "--scope",
            "/v0/event_bus_gateway/send_push",
            "--scope",
            &url("send_notifications"),
            "--scope",
            "send_sms",
        ])),
        [url("send_sms"), url("send_push"), url("send_notifications")],
        "action, path or URL; repeats once"
    );

    let refused = token(&["--scope", "send_fax"]);
    assert!(!refused.status.success());
    let text = stderr(&refused);
    assert!(text.contains("--scope: unknown scope `send_fax`"), "{text}");
    assert!(text.contains("send_email, send_sms, send_push, send_notifications"), "{text}");
}

#[tokio::test]
async fn a_misspelled_variable_is_warned_about() {
    let dir = TempDir::new("misspelled");
    let output = binary(dir.path())
        .args(["token", "--participant-id", PARTICIPANT_ID])
        .env("EBG_WORKER__CONCURENCY", "3")
        .output()
        .unwrap();
    assert!(output.status.success(), "a warning, not an error: {}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("EBG_WORKER__CONCURENCY is not a configuration setting and is ignored (did you mean EBG_WORKER__CONCURRENCY?)"),
        "{text}"
    );
}

#[tokio::test]
async fn token_refuses_participant_ids_the_service_would_refuse() {
    let dir = TempDir::new("token");
    for bad in ["abc", "12a", "123456789012345678901", ""] {
        let output = binary(dir.path()).args(["token", "--participant-id", bad]).output().unwrap();
        assert!(!output.status.success(), "{bad:?} was minted");
        assert!(stderr(&output).contains("--participant-id must be 1 to 20 digits"), "{}", stderr(&output));
        assert!(output.stdout.is_empty());
    }
    let output = binary(dir.path()).args(["token", "--participant-id", "12345678901234567890"]).output().unwrap();
    assert!(output.status.success(), "20 digits is allowed: {}", stderr(&output));
}

/// Run by [`the_harness_shares_one_private_server_per_run_and_removes_it`] in child test processes; in a
/// normal run it checks that the harness's server takes a database.
#[tokio::test]
async fn harness_probe_uses_the_test_server() {
    let database = TestDatabase::fresh();
    let app = app().database(&database.url).spawn().await;
    assert_eq!(app.send_email(TEMPLATE_ID).await.status(), 200);
    println!("HARNESS-SERVER {}", server_url());
}

#[tokio::test]
async fn the_harness_shares_one_private_server_per_run_and_removes_it() {
    let run = format!("hp{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let dir = std::env::temp_dir().join(format!("ebg-test-pg-{run}"));
    // Two test processes of one run, at the same time, as nextest starts them.
    let probe = || {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "startup::harness_probe_uses_the_test_server", "--nocapture"])
            .env("TEST_DATABASE_URL", "private")
            .env("TEST_RUN_ID", &run)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (probe(), probe());
    let outputs =
        tokio::task::spawn_blocking(move || [first.wait_with_output().unwrap(), second.wait_with_output().unwrap()])
            .await
            .unwrap();
    let servers: Vec<String> = outputs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", stderr(o));
            let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            stdout
                .lines()
                .find_map(|l| l.strip_prefix("HARNESS-SERVER "))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("{stdout}"))
        })
        .collect();
    assert_eq!(servers[0], servers[1], "one server for the run");
    assert_ne!(servers[0], "postgres://postgres@127.0.0.1:5432", "the private one");
    // Nobody uses it any more: the reaper stops it and removes its directory within a few seconds.
    let mut gone = false;
    for _ in 0..100 {
        if !dir.exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "{} was not removed", dir.display());
    let port = servers[0].rsplit(':').next().unwrap().parse::<u16>().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the server was stopped");
}
