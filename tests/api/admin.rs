//! Admin routes beyond Flipper (SPEC §4.4): the kill switch, the audit log, release of suppressed mail,
//! send_email honouring every gate, propagation between replicas, and the `flags` CLI.

use std::time::Duration;

use ebg_notify::toggles::store::{self, AuditContext, Change};
use ebg_notify::toggles::{EMAILS_ENABLED, actor_in_percentage};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const UAT_VETERAN: &str = "600061742";

fn flipper(app: &TestApp, path: &str) -> String {
    format!("{}/flipper/api/features/{EMAILS_ENABLED}{path}", app.address)
}

fn admin_url(app: &TestApp, path: &str) -> String {
    format!("{}/admin{path}", app.address)
}

async fn post_admin(app: &TestApp, url: &str, body: Value) -> reqwest::Response {
    app.client.post(url).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap()
}

/// send_email for `participant` with a fresh template (so the duplicate window never interferes);
/// returns the recorded status.
async fn status_for(app: &TestApp, participant: &str) -> String {
    let response = app
        .post_send_email()
        .bearer_auth(token_for(participant))
        .header("Accept", "application/json")
        .json(&json!({ "template_id": Uuid::new_v4() }))
        .send()
        .await
        .unwrap();
    accepted(response).await.1
}

/// The first numeric participant ids, in order, that satisfy `keep`.
fn participants(count: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
    (600_000_000u64..).map(|n| n.to_string()).filter(|p| keep(p)).take(count).collect()
}

async fn audit(app: &TestApp, query: &str) -> Value {
    app.client
        .get(admin_url(app, &format!("/features/{EMAILS_ENABLED}/audit{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn send_email_honours_each_gate_through_the_rollout() {
    let app = app().spawn().await;
    let other = participants(1, |p| p != UAT_VETERAN && !actor_in_percentage(EMAILS_ENABLED, p, 25.0)).remove(0);

    // Off: everyone suppressed.
    assert_eq!(status_for(&app, UAT_VETERAN).await, "suppressed");

    // UAT: one Veteran through the actor gate.
    post_admin(&app, &flipper(&app, "/actors"), json!({ "flipper_id": UAT_VETERAN })).await;
    assert_eq!(status_for(&app, UAT_VETERAN).await, "queued");
    assert_eq!(status_for(&app, &other).await, "suppressed");

    // Canary 2%, then 25%: the 2% cohort stays in, more join, the rest stay out.
    let in_2 = participants(3, |p| actor_in_percentage(EMAILS_ENABLED, p, 2.0));
    let in_25_only = participants(3, |p| {
        actor_in_percentage(EMAILS_ENABLED, p, 25.0) && !actor_in_percentage(EMAILS_ENABLED, p, 2.0)
    });
    post_admin(&app, &flipper(&app, "/percentage_of_actors"), json!({ "percentage": "2" })).await;
    for p in &in_2 {
        assert_eq!(status_for(&app, p).await, "queued", "{p} is in the 2% cohort");
    }
    for p in &in_25_only {
        assert_eq!(status_for(&app, p).await, "suppressed", "{p} is not in the 2% cohort");
    }
    post_admin(&app, &flipper(&app, "/percentage_of_actors"), json!({ "percentage": "25" })).await;
    for p in in_2.iter().chain(&in_25_only) {
        assert_eq!(status_for(&app, p).await, "queued", "{p} is in the 25% cohort");
    }
    assert_eq!(status_for(&app, &other).await, "suppressed");
    assert_eq!(status_for(&app, UAT_VETERAN).await, "queued", "the actor gate still holds");

    // Percentage of time at 100% opens it for everyone; boolean too.
    post_admin(&app, &flipper(&app, "/percentage_of_time"), json!({ "percentage": "100" })).await;
    assert_eq!(status_for(&app, &other).await, "queued");
    app.client.delete(flipper(&app, "/percentage_of_time")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(status_for(&app, &other).await, "suppressed");
    post_admin(&app, &flipper(&app, "/boolean"), json!({})).await;
    assert_eq!(status_for(&app, &other).await, "queued");
}

#[tokio::test]
async fn pause_turns_everyone_off_and_resume_restores_the_exact_stage() {
    let app = app().spawn().await;
    post_admin(&app, &flipper(&app, "/percentage_of_actors"), json!({ "percentage": "25" })).await;
    let stage: Value =
        post_admin(&app, &flipper(&app, "/actors"), json!({ "flipper_id": UAT_VETERAN })).await.json().await.unwrap();
    let cohort = participants(1, |p| actor_in_percentage(EMAILS_ENABLED, p, 25.0)).remove(0);
    assert_eq!(status_for(&app, UAT_VETERAN).await, "queued");
    assert_eq!(status_for(&app, &cohort).await, "queued");

    // A reason is required.
    let refused = post_admin(&app, &admin_url(&app, &format!("/features/{EMAILS_ENABLED}/pause")), json!({})).await;
    assert_eq!(refused.status(), 422);

    let paused = post_admin(
        &app,
        &admin_url(&app, &format!("/features/{EMAILS_ENABLED}/pause")),
        json!({ "reason": "VA Notify incident" }),
    )
    .await;
    assert_eq!(paused.status(), 200);
    let paused: Value = paused.json().await.unwrap();
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["gates"], stage["gates"], "pausing leaves the gates alone");
    assert_eq!(status_for(&app, UAT_VETERAN).await, "suppressed");
    assert_eq!(status_for(&app, &cohort).await, "suppressed");
    let shown: Value = app.client.get(flipper(&app, "")).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["paused"], true);

    let resumed = app
        .client
        .post(admin_url(&app, &format!("/features/{EMAILS_ENABLED}/resume")))
        .bearer_auth(ADMIN_TOKEN)
        .header("X-Reason", "incident over")
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let resumed: Value = resumed.json().await.unwrap();
    assert_eq!(resumed["paused"], false);
    assert_eq!(resumed, stage, "resume restores 25% + the UAT actor exactly");
    assert_eq!(status_for(&app, UAT_VETERAN).await, "queued");
    assert_eq!(status_for(&app, &cohort).await, "queued");

    let missing = post_admin(&app, &admin_url(&app, "/features/no_such_feature/pause"), json!({"reason": "x"})).await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn audit_rows_record_who_why_and_before_after_newest_first() {
    let dir = std::env::temp_dir().join(format!("ebg-admin-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens.toml");
    std::fs::write(&file, "[[admin.tokens]]\nname = \"alice\"\ntoken = \"alice-token-0123456789\"\n").unwrap();
    let app = app().env("EBG_CONFIG_FILE", file.display()).spawn().await;

    app.client
        .post(flipper(&app, "/percentage_of_actors"))
        .bearer_auth("alice-token-0123456789")
        .header("X-Reason", "canary")
        .header("x-request-id", "req-123")
        .json(&json!({ "percentage": "2" }))
        .send()
        .await
        .unwrap();
    post_admin(&app, &flipper(&app, "/percentage_of_actors"), json!({ "percentage": "25", "reason": "stage 2" })).await;
    post_admin(&app, &admin_url(&app, &format!("/features/{EMAILS_ENABLED}/pause")), json!({ "reason": "incident" }))
        .await;

    let page = audit(&app, "").await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(page["next_before_id"], Value::Null);
    let (pause, stage2, canary) = (&entries[0], &entries[1], &entries[2]);
    assert_eq!(pause["operation"], "pause");
    assert_eq!(pause["actor"], "ops");
    assert_eq!(pause["reason"], "incident");
    assert_eq!(pause["before"]["paused"], false);
    assert_eq!(pause["after"]["paused"], true);
    assert_eq!(pause["after"]["percentage_of_actors"], 25.0);
    assert_eq!(stage2["reason"], "stage 2");
    assert_eq!(stage2["before"]["percentage_of_actors"], 2.0);
    assert_eq!(canary["actor"], "alice");
    assert_eq!(canary["reason"], "canary");
    assert_eq!(canary["request_id"], "req-123");
    assert_eq!(canary["gate"], "percentage_of_actors");
    assert_eq!(canary["value"], "2");
    assert_eq!(
        canary["before"],
        json!({"boolean": false, "actors": [], "percentage_of_actors": 0.0, "percentage_of_time": 0.0, "paused": false})
    );
    assert!(stage2["request_id"].as_str().is_some_and(|id| !id.is_empty()), "generated request id is recorded");

    // Pagination.
    let first = audit(&app, "?limit=2").await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    let before = first["next_before_id"].as_i64().unwrap();
    let second = audit(&app, &format!("?limit=2&before_id={before}")).await;
    assert_eq!(second["entries"].as_array().unwrap().len(), 1);
    assert_eq!(second["entries"][0]["operation"], "enable");
    assert_eq!(second["entries"][0]["actor"], "alice");

    // The log is append-only.
    let edit = sqlx::query("update feature_audit set actor = 'mallory'").execute(&app.db).await;
    assert!(edit.is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn admin_and_ebg_tokens_never_open_each_others_routes() {
    let app = app().spawn().await;
    for path in [format!("/features/{EMAILS_ENABLED}/pause"), "/notifications/release".to_owned()] {
        let response = app
            .client
            .post(admin_url(&app, &path))
            .bearer_auth(token_for(PARTICIPANT_ID))
            .json(&json!({ "reason": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(response.json::<Value>().await.unwrap(), json!({"message": "Unauthorized"}));
    }
    let response = app
        .post_send_email()
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "template_id": TEMPLATE_ID }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(app.count("queued").await + app.count("suppressed").await, 0);
}

#[tokio::test]
async fn release_queues_suppressed_mail_of_enabled_participants_once() {
    let app = app().spawn().await;
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    let still_off = participants(1, |p| p != UAT_VETERAN).remove(0);
    // Toggle off: both Veterans are suppressed; the UAT Veteran's event arrives twice under two
    // Idempotency-Keys (so accept's duplicate rule did not catch it).
    for (participant, key) in [(UAT_VETERAN, "evt-1"), (UAT_VETERAN, "evt-2"), (still_off.as_str(), "evt-3")] {
        let response = app
            .post_send_email()
            .bearer_auth(token_for(participant))
            .header("Idempotency-Key", key)
            .json(&json!({ "template_id": TEMPLATE_ID }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(app.count("suppressed").await, 3);

    post_admin(&app, &flipper(&app, "/actors"), json!({ "flipper_id": UAT_VETERAN })).await;
    let range = json!({ "from": started, "to": chrono::Utc::now() + chrono::Duration::seconds(5) });
    let release = admin_url(&app, "/notifications/release");

    let mut dry = range.clone();
    dry["dry_run"] = json!(true);
    let outcome: Value = post_admin(&app, &release, dry).await.json().await.unwrap();
    let expected = json!({
        "dry_run": true, "channel": "email", "suppressed": 3, "released": 1, "still_disabled": 1, "duplicates": 1,
        "unresolved": 0, "unresolved_reasons": {},
    });
    assert_eq!(outcome, expected);
    assert_eq!(app.count("suppressed").await, 3, "a dry run changes nothing");

    // Without `to`, everything recorded so far (including this very second) is in range.
    let until_now = json!({ "from": started });
    let outcome: Value = post_admin(&app, &release, until_now).await.json().await.unwrap();
    assert_eq!(outcome["released"], 1);
    assert_eq!(app.count("queued").await, 1);
    let reason: String = sqlx::query_scalar("select status_reason from notifications where status = 'queued'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(reason, "released");

    let again: Value = post_admin(&app, &release, range.clone()).await.json().await.unwrap();
    assert_eq!(again["released"], 0, "releasing twice sends once");
    assert_eq!(app.count("queued").await, 1);

    let log = audit(&app, "").await;
    let releases: Vec<&Value> =
        log["entries"].as_array().unwrap().iter().filter(|e| e["operation"] == "release_suppressed").collect();
    assert_eq!(releases.len(), 2, "real runs are audited, the dry run is not");
    let counts: Value = serde_json::from_str(releases[1]["value"].as_str().unwrap()).unwrap();
    assert_eq!(counts["released"], 1);

    // Bad ranges are 400s.
    let bad = post_admin(&app, &release, json!({ "from": "yesterday", "to": "today" })).await;
    assert_eq!(bad.status(), 400);
    let missing = post_admin(&app, &release, json!({})).await;
    assert_eq!(missing.status(), 400);
}

/// Whether `replica` has `participant` enabled in its in-memory snapshot (no query).
fn sees_enabled(replica: &TestApp, participant: &str) -> bool {
    replica
        .state
        .toggles
        .snapshot()
        .features
        .get(EMAILS_ENABLED)
        .is_some_and(|t| t.is_open_for(EMAILS_ENABLED, Some(participant), || 1.0))
}

#[tokio::test]
async fn changes_reach_another_replica_within_a_second() {
    let first = app().spawn().await;
    // A long fallback interval, so only LISTEN/NOTIFY can deliver the change in time.
    let second = app().database(&first.database_url).env("EBG_TOGGLES__REFRESH_INTERVAL_MS", 60_000).spawn().await;
    // Let the second replica's listener connect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let within = Duration::from_secs(1);

    // Through one replica's API.
    post_admin(&first, &flipper(&first, "/actors"), json!({ "flipper_id": "700000001" })).await;
    assert!(second.eventually(within, || async { sees_enabled(&second, "700000001") }).await);

    // Directly in SQL.
    sqlx::query("insert into flipper_gates (feature_key, key, value) values ($1, 'actors', '700000002')")
        .bind(EMAILS_ENABLED)
        .execute(&first.db)
        .await
        .unwrap();
    assert!(second.eventually(within, || async { sees_enabled(&second, "700000002") }).await);

    // Through the store, as the CLI does.
    let ctx = AuditContext { actor: "cli:test".into(), reason: None, request_id: None };
    store::apply(&first.db, EMAILS_ENABLED, &Change::Pause, &ctx).await.unwrap();
    assert!(second.eventually(within, || async { !sees_enabled(&second, "700000001") }).await);

    // And send_email on the other replica honours it.
    store::apply(&first.db, EMAILS_ENABLED, &Change::Resume, &ctx).await.unwrap();
    assert!(second.eventually(within, || async { sees_enabled(&second, "700000001") }).await);
    assert_eq!(status_for(&second, "700000001").await, "queued");

    let metrics = second.metrics().await;
    assert!(metrics.contains("ebg_toggle_snapshot_age_seconds"), "staleness gauge is exported");
}

fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ebg-notify"))
        .args(args)
        .env("EBG_DATABASE__URL", &app.database_url)
        .env("EBG_TELEMETRY__LOG_FILTER", "error")
        .env("USER", "tester")
        .output()
        .unwrap()
}

fn cli_ok(app: &TestApp, args: &[&str]) -> String {
    let output = cli(app, args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn flags_cli_changes_toggles_with_the_same_audit_trail() {
    let app = app().spawn().await;
    let f = EMAILS_ENABLED;

    let shown = cli_ok(&app, &["flags", "actor", f, UAT_VETERAN]);
    assert!(shown.contains(&format!("actors: {UAT_VETERAN}")), "{shown}");
    let shown = cli_ok(&app, &["flags", "percent", f, "2.5", "--as", "alice", "--reason", "canary"]);
    assert!(shown.contains("percentage_of_actors: 2.5"), "{shown}");
    assert!(shown.contains("state: conditional"), "{shown}");

    let paused = cli_ok(&app, &["flags", "pause", f, "--reason", "incident"]);
    assert!(paused.contains("paused: yes"), "{paused}");
    assert!(app.eventually(Duration::from_secs(1), || async { !sees_enabled(&app, UAT_VETERAN) }).await);
    assert_eq!(status_for(&app, UAT_VETERAN).await, "suppressed");
    assert!(!cli(&app, &["flags", "pause", f]).status.success(), "pause requires --reason");

    let show = cli_ok(&app, &["flags", "show", f]);
    assert!(show.contains("paused: yes") && show.contains("percentage_of_actors: 2.5"), "{show}");
    let list = cli_ok(&app, &["flags", "list"]);
    assert!(list.lines().any(|l| l.starts_with(f) && l.contains("paused=yes")), "{list}");

    cli_ok(&app, &["flags", "resume", f]);
    assert!(app.eventually(Duration::from_secs(1), || async { sees_enabled(&app, UAT_VETERAN) }).await);
    cli_ok(&app, &["flags", "actor", f, UAT_VETERAN, "--remove"]);
    cli_ok(&app, &["flags", "enable", f]);
    let disabled = cli_ok(&app, &["flags", "disable", f]);
    assert!(disabled.contains("state: off"), "{disabled}");
    assert!(!cli(&app, &["flags", "percent", f, "150"]).status.success());
    assert!(!cli(&app, &["flags", "show", "no_such_feature"]).status.success());

    let log = cli_ok(&app, &["flags", "audit", f, "--limit", "10"]);
    // A header, then: id, date, time, actor, operation, ...
    let operations: Vec<&str> = log.lines().skip(1).map(|l| l.split_whitespace().nth(4).unwrap()).collect();
    assert_eq!(operations, ["disable", "enable", "disable", "resume", "pause", "enable", "enable"]);

    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("select operation, actor, reason from feature_audit where feature_key = $1 order by id")
            .bind(f)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(rows[0], ("enable".into(), "cli:tester".into(), None));
    assert_eq!(rows[1], ("enable".into(), "cli:alice".into(), Some("canary".into())));
    assert_eq!(rows[2], ("pause".into(), "cli:tester".into(), Some("incident".into())));
}
