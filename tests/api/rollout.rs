//! Guarded rollout (SPEC §9): plans advance on a controlled clock, pause when VA Notify fails, halt
//! without data, never double-advance across replicas, only advise in advise mode, yield to operators;
//! and `ebg-notify simulate` runs the whole plan end to end.

use chrono::{DateTime, Duration, Utc};
use ebg_notify::report::{self, ReportRequest};
use ebg_notify::rollout::{Decision, evaluate_once};
use ebg_notify::toggles::actor_in_percentage;
use ebg_notify::toggles::store;
use ebg_testkit::FakeVaNotify;
use ebg_testkit::va_notify::Reply;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const FEATURE: &str = "event_bus_gateway_emails_enabled";
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// The seed's stages with a small sample, so tests insert tens of rows, not hundreds.
fn seed_stages(min_sends: u64) -> Value {
    let dwell = [4 * HOUR, DAY, DAY, DAY, DAY];
    let pct = [2, 25, 50, 75, 100];
    json!(
        pct.iter()
            .zip(dwell)
            .map(|(p, d)| json!({"percentage": p, "min_dwell_seconds": d, "min_sends": min_sends}))
            .collect::<Vec<_>>()
    )
}

/// An app without the background evaluator: the tests drive `evaluate_once` with their own clock.
fn rollout_app() -> TestAppBuilder {
    app().env("EBG_ROLLOUT__ENABLED", "false")
}

async fn create_plan(app: &TestApp, body: Value) -> Value {
    let r = app
        .client
        .post(format!("{}/admin/rollouts", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn plan_json(app: &TestApp, id: &str) -> Value {
    let r = app.client.get(format!("{}/admin/rollouts/{id}", app.address)).bearer_auth(ADMIN_TOKEN).send().await;
    r.unwrap().json().await.unwrap()
}

async fn override_plan(app: &TestApp, id: &str, action: &str, reason: Option<&str>) -> reqwest::Response {
    let mut request = app.client.post(format!("{}/admin/rollouts/{id}/{action}", app.address)).bearer_auth(ADMIN_TOKEN);
    if let Some(reason) = reason {
        request = request.header("x-reason", reason);
    }
    request.send().await.unwrap()
}

/// `count` email notifications requested from `at` on, one a minute, ending in `status`.
async fn rows(app: &TestApp, at: DateTime<Utc>, count: i32, status: &str) {
    let sends = if status == "failed" { 0 } else { 1 };
    sqlx::query(
        "insert into notifications (id, channel, participant_id, template_id, status, sends, created_at)
         select gen_random_uuid(), 'email', (600100000 + g)::text, $3::uuid, $4, $5, $1 + g * interval '1 minute'
         from generate_series(0, $2 - 1) g",
    )
    .bind(at)
    .bind(count)
    .bind(TEMPLATE_ID)
    .bind(status)
    .bind(sends)
    .execute(&app.db)
    .await
    .unwrap();
}

async fn feature(app: &TestApp) -> store::FeatureRecord {
    store::feature(&app.db, FEATURE).await.unwrap().unwrap()
}

/// Evaluates once and returns the decision taken for the only plan.
async fn evaluate(app: &TestApp, now: DateTime<Utc>) -> (Decision, &'static str) {
    let run = evaluate_once(&app.db, now).await.unwrap();
    assert!(!run.skipped && run.failures == 0, "{run:?}");
    assert_eq!(run.outcomes.len(), 1, "{run:?}");
    (run.outcomes[0].decision, run.outcomes[0].reason)
}

async fn audit_operations(app: &TestApp) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as("select operation, actor, value from feature_audit where feature_key = $1 order by id")
        .bind(FEATURE)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

fn id_of(plan: &Value) -> String {
    plan["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_auto_plan_advances_through_every_stage_to_100_percent() {
    let app = rollout_app().spawn().await;
    let before = app.metric(r#"ebg_rollout_decisions_total{decision="advance",mode="auto"}"#).await;
    let plan = create_plan(&app, json!({"mode": "auto", "stages": seed_stages(10)})).await;
    assert_eq!(plan["state"], "pending");
    assert_eq!(plan["feature"], FEATURE, "the feature defaults to the emails toggle");
    let t0 = Utc::now();
    assert_eq!(evaluate(&app, t0).await, (Decision::Start, "plan_started"));
    assert_eq!(feature(&app).await.percentage_of_actors.as_deref(), Some("2"));

    let dwell = [4 * HOUR, DAY, DAY, DAY, DAY];
    let mut start = t0;
    for (i, expected_next) in ["25", "50", "75", "100"].iter().enumerate() {
        rows(&app, start + Duration::minutes(1), 20, "delivered").await;
        let end = start + Duration::seconds(dwell[i]);
        assert_eq!(evaluate(&app, end - Duration::seconds(1)).await, (Decision::Hold, "dwell_not_met"), "stage {i}");
        assert_eq!(evaluate(&app, end).await, (Decision::Advance, "criteria_met"), "stage {i}");
        assert_eq!(feature(&app).await.percentage_of_actors.as_deref(), Some(*expected_next));
        start = end;
    }
    rows(&app, start + Duration::minutes(1), 20, "delivered").await;
    assert_eq!(evaluate(&app, start + Duration::seconds(DAY)).await, (Decision::Complete, "criteria_met"));
    let finish = start + Duration::seconds(DAY);

    let detail = plan_json(&app, &id_of(&plan)).await;
    assert_eq!(detail["state"], "completed");
    assert_eq!(detail["current_stage"], 4);
    // Repeated holds are logged once per stage: start, (hold, advance) x 4, hold... complete.
    let decisions: Vec<&str> =
        detail["decisions"].as_array().unwrap().iter().map(|d| d["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions.iter().filter(|d| **d == "advance").count(), 4, "{decisions:?}");
    assert_eq!(decisions.last(), Some(&"complete"));
    let advance = detail["decisions"].as_array().unwrap().iter().find(|d| d["decision"] == "advance").unwrap();
    assert_eq!(advance["evidence"]["attempted"], 20);
    assert_eq!(advance["evidence"]["max_error_rate"], 0.05);
    assert_eq!(advance["evidence"]["min_sends"], 10);
    assert_eq!(advance["applied"], true);

    // The audit log has every automatic decision with its evidence, by `rollout`.
    let ops = audit_operations(&app).await;
    let rollout_ops: Vec<&str> =
        ops.iter().filter(|(_, actor, _)| actor == "rollout").map(|(op, _, _)| op.as_str()).collect();
    assert_eq!(rollout_ops.iter().filter(|op| **op == "rollout_advance").count(), 4, "{rollout_ops:?}");
    assert!(rollout_ops.contains(&"rollout_start") && rollout_ops.contains(&"rollout_complete"));
    let reason: String =
        sqlx::query_scalar("select reason from feature_audit where operation = 'rollout_advance' order by id limit 1")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let evidence: Value = serde_json::from_str(&reason).unwrap();
    assert_eq!((evidence["attempted"].clone(), evidence["failed"].clone()), (json!(20), json!(0)));

    // The report, built from the same audit log, shows the same five stages with the same numbers.
    // Judged with the plan's minimum sample (10), the report passes what the plan passed.
    let mut request = ReportRequest {
        feature: FEATURE.into(),
        from: Some(t0),
        to: Some(finish),
        max_error_rate: 0.05,
        min_sample: 10,
        click_tracking: false,
    };
    let built = report::build(&app.db, &request).await.unwrap();
    let shares: Vec<f64> = built.stages.iter().map(|s| s.percentage).collect();
    assert_eq!(shares, [2.0, 25.0, 50.0, 75.0, 100.0]);
    assert!(built.stages.iter().all(|s| s.counts.attempted == 20 && s.verdict == report::Verdict::Pass));
    assert!(built.stages.iter().all(|s| s.click_through_rate.is_none()), "no click-through rate without tracking");
    // With the report's default minimum (100), the same 20 sends per stage are not enough to pass.
    request.min_sample = 100;
    let strict = report::build(&app.db, &request).await.unwrap();
    assert!(strict.stages.iter().all(|s| s.verdict == report::Verdict::NotEnoughData));

    let after = app.metric(r#"ebg_rollout_decisions_total{decision="advance",mode="auto"}"#).await;
    assert!(after - before >= 4.0, "{before} -> {after}");
}

#[tokio::test]
async fn an_auto_plan_pauses_the_feature_at_25_percent_when_va_notify_starts_failing() {
    let fake = FakeVaNotify::start().await;
    let app = rollout_app().notify(&fake).spawn().await;
    let plan = create_plan(&app, json!({"mode": "auto", "stages": seed_stages(10)})).await;
    // The canary ran two days ago (inserted rows); the 25% stage is running now, on real traffic.
    let t0 = Utc::now() - Duration::days(2);
    evaluate(&app, t0).await;
    rows(&app, t0 + Duration::minutes(1), 20, "delivered").await;
    assert_eq!(evaluate(&app, t0 + Duration::seconds(4 * HOUR)).await.0, Decision::Advance);
    app.state.toggles.refresh().await.unwrap();

    // Twenty Veterans in the 25% cohort; VA Notify refuses three of their emails.
    let cohort: Vec<String> = (600_200_000u64..)
        .map(|id| id.to_string())
        .filter(|id| actor_in_percentage(FEATURE, id, 25.0))
        .take(20)
        .collect();
    fake.script([Reply::Created, Reply::BadRequest, Reply::Created, Reply::BadRequest, Reply::BadRequest]);
    for id in &cohort {
        assert_eq!(app.send_email_as(id, TEMPLATE_ID).await.status(), 200);
    }
    assert_eq!(app.count("queued").await, 20);
    app.deliver_all().await;
    assert_eq!(app.count("failed").await, 3);

    let before = app.metric(r#"ebg_rollout_decisions_total{decision="pause",mode="auto"}"#).await;
    assert_eq!(evaluate(&app, Utc::now() + Duration::seconds(1)).await, (Decision::Pause, "error_rate_exceeded"));
    let after = app.metric(r#"ebg_rollout_decisions_total{decision="pause",mode="auto"}"#).await;
    assert_eq!(after - before, 1.0);

    // Kill switch on, gates preserved: resuming would restore exactly 25%.
    let record = feature(&app).await;
    assert!(record.paused);
    assert_eq!(record.percentage_of_actors.as_deref(), Some("25"));
    let detail = plan_json(&app, &id_of(&plan)).await;
    assert_eq!(detail["state"], "paused");
    assert_eq!(detail["current_stage"], 1);
    let pause = detail["decisions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(pause["decision"], "pause");
    assert_eq!((pause["evidence"]["attempted"].clone(), pause["evidence"]["failed"].clone()), (json!(20), json!(3)));
    assert_eq!(pause["evidence"]["error_rate"], 0.15);
    let (op, actor, _) = audit_operations(&app).await.pop().unwrap();
    assert_eq!((op.as_str(), actor.as_str()), ("rollout_pause", "rollout"));

    // The evaluator leaves a paused plan alone, and new mail is suppressed.
    let run = evaluate_once(&app.db, Utc::now() + Duration::days(3)).await.unwrap();
    assert!(run.outcomes.is_empty());
    app.state.toggles.refresh().await.unwrap();
    // (Another template, or it would be a duplicate of the first request.)
    let other_template = Uuid::new_v4().to_string();
    assert_eq!(app.send_email_as(&cohort[0], &other_template).await.status(), 200);
    assert_eq!(app.count("suppressed").await, 1);
}

#[tokio::test]
async fn a_plan_without_enough_traffic_halts_and_never_passes() {
    let app = rollout_app().spawn().await;
    let plan = create_plan(&app, json!({"mode": "auto", "stages": seed_stages(10)})).await;
    let t0 = Utc::now();
    evaluate(&app, t0).await;
    let halt_before = app.metric(r#"ebg_rollout_decisions_total{decision="halt",mode="auto"}"#).await;

    // No data at all: the dwell is long over, but nothing was attempted.
    assert_eq!(evaluate(&app, t0 + Duration::hours(5)).await, (Decision::Halt, "insufficient_sample"));
    assert_eq!(plan_json(&app, &id_of(&plan)).await["state"], "halted");
    // Too little data: three sends, all fine, a week later. Still no pass.
    rows(&app, t0 + Duration::minutes(1), 3, "delivered").await;
    assert_eq!(evaluate(&app, t0 + Duration::days(7)).await, (Decision::Halt, "insufficient_sample"));
    // A failing but tiny sample is not evidence to pause either.
    rows(&app, t0 + Duration::minutes(10), 3, "failed").await;
    assert_eq!(evaluate(&app, t0 + Duration::days(7)).await.0, Decision::Halt);
    assert_eq!(feature(&app).await.percentage_of_actors.as_deref(), Some("2"));
    assert!(!feature(&app).await.paused);

    // Each pass is counted; the repeated halt is logged once.
    let halt_after = app.metric(r#"ebg_rollout_decisions_total{decision="halt",mode="auto"}"#).await;
    assert!(halt_after - halt_before >= 3.0);
    let detail = plan_json(&app, &id_of(&plan)).await;
    let halts = detail["decisions"].as_array().unwrap().iter().filter(|d| d["decision"] == "halt").count();
    assert_eq!(halts, 1);
    assert_eq!(detail["last_evaluation"]["attempted"], 6, "the latest numbers are kept on the plan");

    // Once the sample is there, the stage is judged: 3 failed of 13 is 23%, so it pauses.
    rows(&app, t0 + Duration::minutes(20), 7, "delivered").await;
    assert_eq!(evaluate(&app, t0 + Duration::days(7)).await.0, Decision::Pause);
}

#[tokio::test]
async fn two_replicas_never_double_advance() {
    let a = rollout_app().spawn().await;
    let b = rollout_app().database(&a.database_url).spawn().await;
    let plan = create_plan(&a, json!({"mode": "auto", "stages": seed_stages(10)})).await;
    let t0 = Utc::now();
    evaluate(&a, t0).await;
    rows(&a, t0 + Duration::minutes(1), 20, "delivered").await;

    // Both replicas evaluate the same moment, concurrently and repeatedly.
    let at = t0 + Duration::seconds(4 * HOUR);
    for _ in 0..5 {
        let (ra, rb) = tokio::join!(evaluate_once(&a.db, at), evaluate_once(&b.db, at));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(ra.failures == 0 && rb.failures == 0);
    }
    let detail = plan_json(&b, &id_of(&plan)).await;
    assert_eq!(detail["current_stage"], 1);
    let advances = detail["decisions"].as_array().unwrap().iter().filter(|d| d["decision"] == "advance").count();
    assert_eq!(advances, 1);
    let audited: i64 = sqlx::query_scalar("select count(*) from feature_audit where operation = 'rollout_advance'")
        .fetch_one(&a.db)
        .await
        .unwrap();
    assert_eq!(audited, 1);

    // While one replica holds the evaluator lock, the other's pass does nothing at all.
    let mut holder = a.db.acquire().await.unwrap();
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtextextended('ebg_rollout/evaluator', 0))")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    assert!(locked);
    let run = evaluate_once(&b.db, at + Duration::days(30)).await.unwrap();
    assert!(run.skipped && run.outcomes.is_empty());
    sqlx::query("select pg_advisory_unlock(hashtextextended('ebg_rollout/evaluator', 0))")
        .execute(&mut *holder)
        .await
        .unwrap();
    drop(holder);
    assert!(!evaluate_once(&b.db, at + Duration::days(30)).await.unwrap().skipped);
}

#[tokio::test]
async fn advise_mode_records_what_it_would_do_and_changes_nothing() {
    let app = rollout_app().spawn().await;
    let gates_before = feature(&app).await;
    let plan = create_plan(&app, json!({"mode": "advise", "stages": seed_stages(10)})).await;
    let t0 = Utc::now();
    assert_eq!(evaluate(&app, t0).await.0, Decision::Start);
    rows(&app, t0 + Duration::minutes(1), 20, "delivered").await;
    assert_eq!(evaluate(&app, t0 + Duration::seconds(4 * HOUR)).await.0, Decision::Advance);
    rows(&app, t0 + Duration::seconds(5 * HOUR), 10, "failed").await;
    assert_eq!(evaluate(&app, t0 + Duration::seconds(6 * HOUR)).await.0, Decision::Pause);

    assert_eq!(feature(&app).await, gates_before, "advice never touches the gates or the kill switch");
    let detail = plan_json(&app, &id_of(&plan)).await;
    assert_eq!(detail["mode"], "advise");
    let decisions = detail["decisions"].as_array().unwrap();
    assert!(decisions.iter().all(|d| d["applied"] == false && d["mode"] == "advise"), "{decisions:#?}");
    // The advice is in the audit log too, as rows that change nothing.
    let rows: Vec<(String, Value, Value)> =
        sqlx::query_as("select operation, before, after from feature_audit where actor = 'rollout' order by id")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let ops: Vec<&str> = rows.iter().map(|(op, _, _)| op.as_str()).collect();
    assert_eq!(ops, ["rollout_start", "rollout_advance", "rollout_pause"]);
    assert!(rows.iter().all(|(_, before, after)| before == after));
}

#[tokio::test]
async fn operators_override_and_a_manual_gate_change_interrupts_the_plan() {
    let app = rollout_app().spawn().await;
    let url = format!("{}/admin/rollouts", app.address);
    assert_eq!(app.client.post(&url).json(&json!({"mode": "auto"})).send().await.unwrap().status(), 401);
    let bad = app.client.post(&url).bearer_auth(ADMIN_TOKEN).json(&json!({"mode": "auto", "stages": [{"percentage": 50, "min_dwell_seconds": 1, "min_sends": 1}, {"percentage": 25, "min_dwell_seconds": 1, "min_sends": 1}]})).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let plan = create_plan(&app, json!({"mode": "auto", "stages": seed_stages(10)})).await;
    let id = id_of(&plan);
    let again = app.client.post(&url).bearer_auth(ADMIN_TOKEN).json(&json!({"mode": "auto"})).send().await.unwrap();
    assert_eq!(again.status(), 409, "one live plan per feature");
    let t0 = Utc::now();
    evaluate(&app, t0).await;

    // Advance by hand, whatever the numbers; audited under the operator's name. Not an interruption.
    let r = override_plan(&app, &id, "advance", Some("UAT looked good")).await;
    assert_eq!(r.status(), 200);
    let detail: Value = r.json().await.unwrap();
    assert_eq!((detail["current_stage"].clone(), detail["state"].clone()), (json!(1), json!("running")));
    assert_eq!(feature(&app).await.percentage_of_actors.as_deref(), Some("25"));
    let (op, actor, value) = audit_operations(&app).await.pop().unwrap();
    assert_eq!((op.as_str(), actor.as_str(), value.as_deref()), ("rollout_advance", "ops", Some("25")));
    assert_eq!(evaluate(&app, Utc::now()).await.0, Decision::Hold);

    // Pause needs a reason; pausing twice is refused; resume restores the stage.
    assert_eq!(override_plan(&app, &id, "pause", None).await.status(), 422);
    assert_eq!(override_plan(&app, &id, "pause", Some("call center reports")).await.status(), 200);
    assert!(feature(&app).await.paused);
    assert_eq!(override_plan(&app, &id, "pause", Some("again")).await.status(), 409);
    assert_eq!(override_plan(&app, &id, "resume", None).await.status(), 200);
    let record = feature(&app).await;
    assert!(!record.paused);
    assert_eq!(record.percentage_of_actors.as_deref(), Some("25"));

    // An operator moves the gate outside the plan: the automation stops fighting it.
    let r = app
        .client
        .post(format!("{}/flipper/api/features/{FEATURE}/percentage_of_actors", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"percentage": "40"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(evaluate(&app, Utc::now()).await, (Decision::Interrupted, "operator_changed_gates"));
    let detail = plan_json(&app, &id).await;
    assert_eq!(detail["state"], "interrupted");
    rows(&app, Utc::now() - Duration::minutes(30), 50, "delivered").await;
    assert!(evaluate_once(&app.db, Utc::now() + Duration::days(30)).await.unwrap().outcomes.is_empty());
    assert_eq!(feature(&app).await.percentage_of_actors.as_deref(), Some("40"));
    assert_eq!(override_plan(&app, &id, "abort", Some("done")).await.status(), 409, "already ended");
    assert_eq!(override_plan(&app, &Uuid::new_v4().to_string(), "abort", Some("x")).await.status(), 404);

    // An interrupted plan is not live: a new one may start, and can be aborted.
    let next = create_plan(&app, json!({"mode": "advise"})).await;
    assert_eq!(override_plan(&app, &id_of(&next), "abort", Some("not now")).await.status(), 200);
    let list: Value = app.client.get(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    let states: Vec<&str> = list["plans"].as_array().unwrap().iter().map(|p| p["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["aborted", "interrupted"]);
    let openapi: Value =
        app.client.get(format!("{}/openapi.json", app.address)).send().await.unwrap().json().await.unwrap();
    assert!(openapi["paths"]["/admin/rollouts/{id}/advance"]["post"].is_object());
}

/// Runs `ebg-notify simulate` with tiny settings; returns (exit code, stdout). Checks that progress
/// went to stderr as plain lines (no terminal here, so no bar and no escape codes).
fn simulate(failure_rate: &str) -> (Option<i32>, String) {
    simulate_with(&["--failure-rate", failure_rate])
}

/// [`simulate`] with other arguments on top of the tiny settings.
fn simulate_with(args: &[&str]) -> (Option<i32>, String) {
    // Never created: `simulate` makes a database of its own beside it.
    let configured = TestDatabase::fresh().name.clone();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ebg-notify"))
        .args(["simulate", "--stage-seconds", "1", "--rate", "50"])
        .args(["--participants", "500", "--min-sends", "5"])
        .args(args)
        .env("EBG_DATABASE__URL", format!("{}/{configured}", server_url()))
        .env("RUST_LOG", "error")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = stdout.lines().find_map(|l| l.strip_prefix("simulation database: ")).and_then(|l| l.split(' ').next());
    let name = name.unwrap_or_else(|| panic!("no database line in {stdout}\n{stderr}")).to_owned();
    let left = admin_count(&format!("select count(*) from pg_database where datname in ('{name}', '{configured}')"))
        .expect("the server answers");
    assert_eq!(left, 0, "the simulation dropped its database and never created the configured one");
    assert!(stderr.lines().any(|l| l.starts_with("simulate [")), "heartbeat lines without a terminal: {stderr}");
    assert!(!stderr.contains('\u{1b}') && !stderr.contains('\r'), "no escape codes: {stderr:?}");
    (output.status.code(), stdout)
}

#[tokio::test]
async fn simulate_runs_the_seed_plan_to_completion() {
    let (code, stdout) = tokio::task::spawn_blocking(|| simulate("0")).await.unwrap();
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("Result: COMPLETED"), "{stdout}");
    assert!(stdout.contains("## Rollout results"), "{stdout}");
    assert!(stdout.contains("### Stage 5: 100% of users"), "{stdout}");
    assert!(stdout.contains("**advance** (criteria_met)"), "{stdout}");
    assert!(stdout.contains("stage 1/5 (2%): start"), "progress lines: {stdout}");
}

#[tokio::test]
async fn simulate_with_failures_ends_paused_at_the_canary() {
    let (code, stdout) = tokio::task::spawn_blocking(|| simulate("0.2")).await.unwrap();
    assert_eq!(code, Some(3), "PAUSED has its own exit status: {stdout}");
    assert!(stdout.contains("Result: PAUSED at stage 1 (2%)"), "{stdout}");
    assert!(stdout.contains("**pause** (error_rate_exceeded)"), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
}

const SMS: &str = "event_bus_gateway_letter_ready_sms_notifications";
const PUSH: &str = "event_bus_gateway_letter_ready_push_notifications";

/// `count` notifications of `channel` requested from `at` on, one a minute, ending in `status` after
/// `sends` sends (an accepted push is `sent` with reason push_accepted, its final state).
async fn channel_rows(app: &TestApp, channel: &str, at: DateTime<Utc>, count: i32, status: &str, sends: i32) {
    let reason = (channel == "push" && status == "sent").then_some("push_accepted");
    sqlx::query(
        "insert into notifications (id, channel, participant_id, template_id, status, status_reason, sends, created_at)
         select gen_random_uuid(), $6, (600700000 + g)::text, $3, $4, $7, $5, $1 + g * interval '1 minute'
         from generate_series(0, $2 - 1) g",
    )
    .bind(at)
    .bind(count)
    .bind(TEMPLATE_ID)
    .bind(status)
    .bind(sends)
    .bind(channel)
    .bind(reason)
    .execute(&app.db)
    .await
    .unwrap();
}

async fn percentage_of(app: &TestApp, feature: &str) -> (Option<String>, bool) {
    let record = store::feature(&app.db, feature).await.unwrap().unwrap();
    (record.percentage_of_actors, record.paused)
}

/// A push stage is judged on pushes alone: accepted pushes are final (no delivery receipts), so twenty of
/// them pass the stage, and the emails failing in the same hours are another channel's.
#[tokio::test]
async fn a_push_plan_advances_on_accepted_pushes_and_ignores_failing_email() {
    let app = rollout_app().spawn().await;
    let plan = create_plan(&app, json!({"feature": PUSH, "mode": "auto", "stages": seed_stages(10)})).await;
    assert_eq!(plan["feature"], PUSH);
    let t0 = Utc::now();
    assert_eq!(evaluate(&app, t0).await, (Decision::Start, "plan_started"));
    assert_eq!(percentage_of(&app, PUSH).await, (Some("2".to_owned()), false));
    channel_rows(&app, "push", t0 + Duration::minutes(1), 20, "sent", 1).await;
    rows(&app, t0 + Duration::minutes(1), 20, "failed").await;

    assert_eq!(evaluate(&app, t0 + Duration::seconds(4 * HOUR)).await, (Decision::Advance, "criteria_met"));
    assert_eq!(percentage_of(&app, PUSH).await, (Some("25".to_owned()), false));
    let detail = plan_json(&app, &id_of(&plan)).await;
    let advance = detail["decisions"].as_array().unwrap().iter().find(|d| d["decision"] == "advance").unwrap().clone();
    let evidence = &advance["evidence"];
    assert_eq!((evidence["attempted"].clone(), evidence["failed"].clone()), (json!(20), json!(0)), "{evidence:#}");
    assert_eq!((evidence["settled"].clone(), evidence["delivered"].clone()), (json!(20), Value::Null));
    assert_eq!(evidence["click_through_rate"], Value::Null);
    assert_ne!(percentage_of(&app, FEATURE).await.0.as_deref(), Some("25"), "the emails gate is not the plan's");
}

/// An SMS stage whose sends fail (VA Notify callbacks) pauses the SMS gate, gates preserved.
#[tokio::test]
async fn an_sms_plan_pauses_its_gate_when_sms_fails() {
    let app = rollout_app().spawn().await;
    let plan = create_plan(&app, json!({"feature": SMS, "mode": "auto", "stages": seed_stages(10)})).await;
    let t0 = Utc::now();
    evaluate(&app, t0).await;
    channel_rows(&app, "sms", t0 + Duration::minutes(1), 17, "delivered", 1).await;
    channel_rows(&app, "sms", t0 + Duration::minutes(30), 3, "permanent_failure", 1).await;
    // Delivered email in the window does not dilute the SMS error rate.
    rows(&app, t0 + Duration::minutes(1), 40, "delivered").await;

    // Failing with enough sample: paused before the dwell is over.
    assert_eq!(evaluate(&app, t0 + Duration::hours(1)).await, (Decision::Pause, "error_rate_exceeded"));
    assert_eq!(percentage_of(&app, SMS).await, (Some("2".to_owned()), true));
    let detail = plan_json(&app, &id_of(&plan)).await;
    assert_eq!(detail["state"], "paused");
    let pause = detail["decisions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((pause["evidence"]["attempted"].clone(), pause["evidence"]["failed"].clone()), (json!(20), json!(3)));
    assert_eq!(pause["evidence"]["error_rate"], 0.15);
    assert!(!percentage_of(&app, FEATURE).await.1, "the emails gate is untouched");
}

/// Plans are for the three channel gates; a click-through criterion needs a channel with a tracked link.
#[tokio::test]
async fn plans_name_a_channel_gate_and_push_plans_take_no_click_criterion() {
    let app = rollout_app().spawn().await;
    let post = |body: Value| {
        app.client.post(format!("{}/admin/rollouts", app.address)).bearer_auth(ADMIN_TOKEN).json(&body).send()
    };
    let universal = json!({"feature": "event_bus_gateway_letter_ready_email_universal_link", "mode": "advise"});
    let r = post(universal).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["source"]["parameter"], "feature", "{body:#}");
    let detail = body["errors"][0]["detail"].as_str().unwrap();
    assert!([FEATURE, SMS, PUSH].iter().all(|g| detail.contains(g)), "the message lists the gates: {detail}");
    let r = post(json!({"feature": PUSH, "mode": "advise", "min_ctr_ratio": 0.8})).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["source"]["parameter"], "min_ctr_ratio", "{body:#}");
    let sms = post(json!({"feature": SMS, "mode": "advise", "min_ctr_ratio": 0.8})).await.unwrap();
    assert_eq!(sms.status(), 201, "SMS carries the tracked link");
}

/// `--channels email,sms,push`: one plan per channel's gate with the same stages, traffic through
/// send_notifications, sandbox MPI for the ICNs, one report per channel.
#[tokio::test]
async fn simulate_rolls_out_email_sms_and_push_side_by_side() {
    let args = ["--failure-rate", "0", "--channels", "email,sms,push"];
    let (code, stdout) = tokio::task::spawn_blocking(move || simulate_with(&args)).await.unwrap();
    assert_eq!(code, Some(0), "every plan completed: {stdout}");
    for (channel, gate) in ["email", "sms", "push"].into_iter().zip(ebg_notify::report::GATES) {
        assert!(stdout.contains(&format!("## Rollout results: `{gate}`")), "{channel} report: {stdout}");
        assert!(stdout.contains(&format!("Channel: {channel} ·")), "{stdout}");
        assert!(stdout.contains(&format!("Result ({channel}): COMPLETED")), "{stdout}");
        assert!(stdout.contains(&format!("## Decisions ({channel})")), "{stdout}");
        assert!(stdout.contains(&format!("] {channel} stage 1/5 (2%): start")), "progress per channel: {stdout}");
    }
    assert!(stdout.contains("VA Notify gives no delivery receipts for push"), "{stdout}");
    assert!(stdout.contains("Delivered: n/a"), "the push report has no delivered count: {stdout}");
    assert_eq!(stdout.matches("### Stage 5: 100% of users").count(), 3, "{stdout}");
}
