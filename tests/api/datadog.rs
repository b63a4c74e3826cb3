//! What Datadog sees, judged by Datadog's own code: the service runs against the fake VA Notify and BGS,
//! traffic with known outcomes goes through it, and `tests/python/datadog/check.py` runs the OpenMetrics V2
//! check of `datadog-checks-base` (what the Agent runs) with the shipped instance twice, into Datadog's stub
//! aggregator, and validates the monitors and the dashboard with `datadog-api-client`'s models (the
//! script's doc says what it asserts). The check's first run only primes monotonic counts, so the known
//! outcomes are produced between the two runs; earlier traffic makes sure deltas, not totals, are judged.

use std::process::Stdio;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use ebg_notify::toggles::{EMAILS_ENABLED, PUSH_ENABLED, SMS_ENABLED, actor_in_percentage};
use ebg_testkit::va_notify::Reply;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

use crate::callbacks::{callback_body, post_bearer, va_id};
use crate::clicks::{CLICKS_ON, raw_get, token_in};
use crate::helpers::post;
use crate::helpers::*;

const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64)";
/// The rollout stage the whole test runs in: half the participants.
const PERCENTAGE: f64 = 50.0;

#[tokio::test]
async fn datadogs_own_check_submits_what_the_monitors_dashboard_and_report_need() {
    let venv = python_venv();
    let mut settings = vec![
        ("EBG_CALLBACKS__RESEND_DELAY_SECONDS", "0"),
        ("EBG_WORKER__MAX_ATTEMPTS", "2"),
        ("EBG_ROLLOUT__ENABLED", "false"),
    ];
    settings.extend_from_slice(CLICKS_ON);
    // ICNs come from the fake MPI over mutual TLS, so its request latency family is exposed too; pushes go
    // through the fake's separate push service.
    let pki = ebg_testkit::TestPki::generate();
    let mpi = ebg_testkit::FakeMpi::start(&pki).await;
    let notify = ebg_testkit::FakeVaNotify::start().await;
    let bgs = ebg_testkit::FakeBgs::start().await;
    bgs.add_person(PARTICIPANT_ID, "JANE");
    let mut builder = app().notify(&notify).push(&notify).bgs(&bgs).mpi(&mpi, &pki);
    for (k, v) in &settings {
        builder = builder.env(k, v);
    }
    let app = builder.spawn().await;
    app.enable_emails().await;
    set_stage(&app).await;
    let (enabled, disabled) = participants(13, 2);
    for id in &enabled {
        bgs.add_person(id, "JOHN");
    }

    // Before the first run: two delivered and one refused (400 -> failed), a click, a rollout decision, a
    // retention pass. Settled before the check primes, so the interval below holds none of it.
    let earlier: Vec<Uuid> = queue_all(&app, &enabled[..3]).await;
    notify.script([Reply::Created, Reply::Created, Reply::BadRequest]);
    app.deliver_all().await;
    let mut delivered_earlier = Vec::new();
    for id in &earlier {
        if app.status_of(*id).await.0 == "sent" {
            callback(&app, *id, "delivered", None).await;
            delivered_earlier.push(*id);
        }
    }
    assert_eq!(delivered_earlier.len(), 2);
    click(&app, &notify, delivered_earlier[0], "GET", BROWSER).await;
    advise_plan(&app).await;
    ebg_notify::retention::purge_before(&app.db, Utc::now() - chrono::Duration::days(400), 1000).await.unwrap();
    // SMS and push on for everyone, for the per-channel error rates of the interval (and so that the SMS
    // below reaches MPI: a channel off for everyone is decided without asking it).
    set_gate(&app, SMS_ENABLED, "boolean", &[]).await;
    set_gate(&app, PUSH_ENABLED, "boolean", &[]).await;
    // An SMS for someone MPI does not know: one MPI call, the row skipped, nothing sent.
    let sms = app
        .client
        .post(format!("{}/v0/event_bus_gateway/send_sms", app.address))
        .bearer_auth(token_for_every_route(&enabled[0]))
        .json(&json!({"template_id": TEMPLATE_ID}));
    assert_eq!(sms.send().await.unwrap().status(), 200);
    app.deliver_all().await;
    assert_eq!(mpi.requests().len(), 1);
    let reachable: Vec<String> = (0..8).map(|n| format!("600300{n:03}")).collect();
    for (n, id) in reachable.iter().enumerate() {
        mpi.add_patient(id, &format!("10123456{n:02}V123456"), Some("JOHN"));
    }

    let from = Utc::now();
    let mut check = Check::start(&venv, &app, from).await;
    check.wait_primed().await;

    // The interval: ten attempted sends (nine accepted, one dead after two 500s), of which two end
    // permanent-failure by callback and seven are delivered; three of those are clicked by a person (one
    // twice), one only by HEAD and one by a scanner; two suppressed requests, a duplicate, a bad token, an
    // unmatched and an unauthorized callback.
    let sends = queue_all(&app, &enabled[3..12]).await;
    notify.script(std::iter::repeat_n(Reply::Created, 9));
    app.deliver_all().await;
    let dead = queue_for(&app, &enabled[12]).await;
    notify.script([Reply::Status500, Reply::Status500]);
    app.deliver_all().await;
    assert_eq!(app.status_of(dead).await.0, "dead");
    for id in &sends[..2] {
        callback(&app, *id, "permanent-failure", Some("Bounce")).await;
    }
    for id in &sends[2..] {
        callback(&app, *id, "delivered", None).await;
    }
    for (id, method, agent) in [
        (sends[2], "GET", BROWSER),
        (sends[2], "GET", BROWSER),
        (sends[3], "GET", BROWSER),
        (sends[4], "GET", BROWSER),
        (sends[5], "HEAD", BROWSER),
        (sends[6], "GET", "Mimecast Scanner"),
    ] {
        click(&app, &notify, id, method, agent).await;
    }
    for id in &disabled {
        assert_eq!(send_json(&app, id).await, "suppressed");
    }
    assert_eq!(send_json(&app, &enabled[3]).await, "duplicate");
    let bad_token = app.post_send_email().bearer_auth("not-a-token").json(&json!({"template_id": TEMPLATE_ID}));
    assert_eq!(bad_token.send().await.unwrap().status(), 401);
    let unmatched = callback_body(Some(Uuid::new_v4()), Some(Uuid::new_v4()), "delivered", None);
    assert_eq!(post_bearer(&app, unmatched).await.status(), 200);
    let unauthorized = app
        .client
        .post(format!("{}/va_notify/callbacks", app.address))
        .bearer_auth("wrong-token")
        .header("content-type", "application/json")
        .body(callback_body(Some(Uuid::new_v4()), Some(sends[2]), "delivered", None));
    assert_eq!(unauthorized.send().await.unwrap().status(), 401);
    assert_eq!(app.count("permanent_failure").await, 2);
    assert_eq!(app.count("delivered").await, 7 + 2);

    // Per channel in the same interval: five SMS (one refused, one bounced by callback, three delivered:
    // 2 errors of 5), one delivered SMS clicked by a person (twice) and one only by a scanner (1 unique
    // click of 3 delivered), and three pushes (one refused, two accepted, which is final for a push: 1 of 3).
    let sms = queue_channel(&app, "send_sms", TEMPLATE_ID, &reachable[..5]).await;
    notify.script([Reply::BadRequest, Reply::Created, Reply::Created, Reply::Created, Reply::Created]);
    app.deliver_all().await;
    let sent_sms: Vec<Uuid> = statuses(&app, &sms, "sent").await;
    assert_eq!(sent_sms.len(), 4, "one SMS refused, four accepted");
    callback(&app, sent_sms[0], "permanent-failure", Some("Unreachable destination handset")).await;
    for id in &sent_sms[1..] {
        callback(&app, *id, "delivered", None).await;
    }
    for (id, agent) in [(sent_sms[1], BROWSER), (sent_sms[1], BROWSER), (sent_sms[2], "Mimecast Scanner")] {
        click(&app, &notify, id, "GET", agent).await;
    }
    let pushes = queue_channel(&app, "send_push", "letter_ready_push", &reachable[5..]).await;
    notify.script([Reply::BadRequest, Reply::Created, Reply::Created]);
    app.deliver_all().await;
    assert_eq!(statuses(&app, &pushes, "sent").await.len(), 2, "two pushes accepted");
    assert_eq!(statuses(&app, &pushes, "failed").await.len(), 1, "one push refused");

    let (ok, output) = check.go().await;
    println!("{output}");
    assert!(ok, "Datadog's check disagrees (output above)");
}

/// The emails toggle at 50% of actors, set through Flipper's API (audited: it is the report's stage).
async fn set_stage(app: &TestApp) {
    let feature = format!("{}/flipper/api/features/{EMAILS_ENABLED}", app.address);
    let clear = app.client.delete(format!("{feature}/boolean")).bearer_auth(ADMIN_TOKEN).header("x-reason", "test");
    assert!(clear.send().await.unwrap().status().is_success());
    set_gate(app, EMAILS_ENABLED, "percentage_of_actors", &[("percentage", PERCENTAGE.to_string())]).await;
}

/// One gate of `feature` through Flipper's API (audited, so it is a stage of the feature's report).
async fn set_gate(app: &TestApp, feature: &str, gate: &str, form: &[(&str, String)]) {
    let set = app
        .client
        .post(format!("{}/flipper/api/features/{feature}/{gate}", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-reason", "stage")
        .form(form);
    assert!(set.send().await.unwrap().status().is_success());
    app.state.toggles.refresh().await.unwrap();
}

/// `on` participant ids inside the stage's percentage and `off` outside it (Flipper's bucketing).
fn participants(on: usize, off: usize) -> (Vec<String>, Vec<String>) {
    let ids: Vec<String> = (0..200).map(|n| format!("600200{n:03}")).collect();
    let (inside, outside): (Vec<_>, Vec<_>) =
        ids.into_iter().partition(|id| actor_in_percentage(EMAILS_ENABLED, id, PERCENTAGE));
    (inside.into_iter().take(on).collect(), outside.into_iter().take(off).collect())
}

async fn queue_all(app: &TestApp, participants: &[String]) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for participant in participants {
        ids.push(queue_for(app, participant).await);
    }
    ids
}

/// One request per participant to a single-channel route (`send_sms`, `send_push`); the rows' ids.
async fn queue_channel(app: &TestApp, route: &str, template: &str, participants: &[String]) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for participant in participants {
        let path = format!("/v0/event_bus_gateway/{route}");
        let (id, status) = accepted(post(app, &path, participant, json!({"template_id": template}), None).await).await;
        assert_eq!(status, "queued", "{route} for {participant}");
        ids.push(id);
    }
    ids
}

/// The ones of `ids` whose row is in `status`.
async fn statuses(app: &TestApp, ids: &[Uuid], status: &str) -> Vec<Uuid> {
    let mut out = Vec::new();
    for id in ids {
        if app.status_of(*id).await.0 == status {
            out.push(*id);
        }
    }
    out
}

/// A send_email request answered as JSON; returns the recorded status.
async fn send_json(app: &TestApp, participant: &str) -> String {
    request_for(app, participant).await.1
}

async fn callback(app: &TestApp, id: Uuid, status: &str, reason: Option<&str>) {
    let body = callback_body(Some(va_id(app, id).await), Some(id), status, reason);
    assert_eq!(post_bearer(app, body).await.status(), 200);
}

async fn click(app: &TestApp, notify: &ebg_testkit::FakeVaNotify, id: Uuid, method: &str, agent: &str) {
    let (status, _) = raw_get(app, method, &format!("/c/{}/claims", token_in(notify, id)), agent).await;
    assert_eq!(status, 302);
}

/// An advise-mode plan and one evaluation: a rollout decision is counted, no gate changes.
async fn advise_plan(app: &TestApp) {
    let created = app
        .client
        .post(format!("{}/admin/rollouts", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"mode": "advise"}));
    assert_eq!(created.send().await.unwrap().status(), 201);
    ebg_notify::rollout::evaluate_once(&app.db, Utc::now()).await.unwrap();
}

/// The pinned venv of tests/python/datadog (built on first use).
fn python_venv() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(format!("{root}/tests/python/venv")).arg("datadog").output().unwrap();
    assert!(out.status.success(), "tests/python/venv datadog failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// check.py, running: it primes, waits for `go`, then judges the interval.
struct Check {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
    output: String,
}

impl Check {
    async fn start(venv: &str, app: &TestApp, from: chrono::DateTime<Utc>) -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let from = from.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut child = tokio::process::Command::new(format!("{venv}/bin/python"))
            .arg(format!("{root}/tests/python/datadog/check.py"))
            .arg("--root")
            .arg(root)
            .arg("--endpoint")
            .arg(format!("{}/metrics", app.address))
            .arg("--report-url")
            .arg(format!("{}/admin/rollout/report?feature={EMAILS_ENABLED}&from={from}", app.address))
            .arg("--admin-token")
            .arg(ADMIN_TOKEN)
            .arg("--expect")
            .arg(format!("error_rate={}", 3.0 / 10.0))
            .arg("--expect")
            .arg(format!("click_through_rate={}", 3.0 / 7.0))
            .arg("--group-report")
            .arg(format!("channel:sms={}/admin/rollout/report?feature={SMS_ENABLED}&from={from}", app.address))
            .arg("--group-report")
            .arg(format!("channel:push={}/admin/rollout/report?feature={PUSH_ENABLED}&from={from}", app.address))
            .arg("--expect")
            .arg(format!("error_rate@channel:sms={}", 2.0 / 5.0))
            .arg("--expect")
            .arg(format!("click_through_rate@channel:sms={}", 1.0 / 3.0))
            .arg("--expect")
            .arg(format!("error_rate@channel:push={}", 1.0 / 3.0))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python starts");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Self { child, stdout, stderr, output: String::new() }
    }

    /// Waits for the first run to finish.
    async fn wait_primed(&mut self) {
        let primed = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                self.output.push_str(&line);
                self.output.push('\n');
                if line == "primed" {
                    return true;
                }
            }
            false
        })
        .await;
        if primed != Ok(true) {
            let _ = self.child.start_kill();
            let stderr = (&mut self.stderr).await.unwrap_or_default();
            panic!("check.py did not prime:\n{}\n{stderr}", self.output);
        }
    }

    /// Lets the second run happen; returns whether every assertion held, and everything the script printed.
    async fn go(mut self) -> (bool, String) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        drop(stdin);
        let finished = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                self.output.push_str(&line);
                self.output.push('\n');
            }
            self.child.wait().await.unwrap()
        })
        .await;
        if finished.is_err() {
            let _ = self.child.start_kill();
        }
        let stderr = self.stderr.await.unwrap_or_default();
        let output = format!("{}{stderr}", self.output);
        match finished {
            Ok(status) => (status.success(), output),
            Err(_) => (false, format!("{output}\ncheck.py timed out")),
        }
    }
}
