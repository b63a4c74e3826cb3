//! A hanging VA Notify must not churn the queue: while a lane's breaker is open, or its half-open trial
//! call is outstanding, nothing of that lane is claimed, so deferrals and database writes follow the
//! trials, not the backlog, and the other lane keeps flowing. Breaker timings are shrunk (200 ms client timeout, 1 s open) to fit the hang in seconds.

use std::sync::Arc;
use std::time::Duration;

use ebg_testkit::va_notify::{Endpoint, Reply};
use ebg_testkit::{FakeBgs, FakeVaNotify};
use serde_json::Value;

use crate::helpers::*;

const BACKLOG: i64 = 1_000;
const CONCURRENCY: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_va_notify_costs_writes_per_trial_not_per_queued_row() {
    let notify = FakeVaNotify::start().await;
    notify.set_recording(false);
    notify.set_latency(Duration::from_secs(30)); // hangs far past the client's timeout
    let bgs = FakeBgs::start().await;
    bgs.add_person(PARTICIPANT_ID, "JANE");
    let app = app()
        .notify(&notify)
        .bgs(&bgs)
        .with_workers()
        .env("EBG_WORKER__CONCURRENCY", CONCURRENCY)
        .env("EBG_NOTIFY__TIMEOUT_MS", 200)
        .env("EBG_NOTIFY__LOOKUP_TIMEOUT_MS", 200)
        .env("EBG_NOTIFY__BREAKER_FAILURE_THRESHOLD", 3)
        .env("EBG_NOTIFY__BREAKER_OPEN_SECONDS", 1)
        .spawn()
        .await;
    let deferred_before = deferrals(&app).await;
    sqlx::query(
        "insert into notifications (id, channel, participant_id, template_id, status, next_attempt_at)
         select gen_random_uuid(), 'email', $1, $2::uuid, 'queued', now() from generate_series(1, $3)",
    )
    .bind(PARTICIPANT_ID)
    .bind(TEMPLATE_ID)
    .bind(BACKLOG)
    .execute(&app.db)
    .await
    .unwrap();
    app.state.wake_workers.wake();

    // Six seconds of hanging: the breaker opens after the first calls, then tries about once a second.
    let mut states = Vec::new();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        states.push(app.metric("ebg_va_notify_circuit_state{lane=\"notify\"}").await);
    }
    let calls = notify.requests_total() + notify.lookups_total();
    let deferred = deferrals(&app).await - deferred_before;
    let attempts: i64 =
        sqlx::query_scalar("select count(*) from notification_attempts").fetch_one(&app.db).await.unwrap();
    eprintln!(
        "hanging 6 s with {BACKLOG} queued: {calls} calls, {deferred} deferrals, {attempts} attempt rows, states {states:?}"
    );
    // The first wave (one per slot) all hang; after that only trials: one per open period.
    assert!(calls <= (CONCURRENCY + 8) as u64, "calls during the hang: {calls}");
    let trials = calls.saturating_sub(CONCURRENCY as u64);
    assert!(
        deferred <= (CONCURRENCY as u64 + trials) as f64,
        "deferrals {deferred} must follow trials ({trials}), not the backlog"
    );
    assert!(attempts as u64 <= calls, "an attempt row per call, none for rows merely pushed back: {attempts}");
    assert!(states.iter().all(|s| *s >= 1.0), "open or half-open throughout the hang: {states:?}");
    assert!(states.contains(&2.0));

    // VA Notify recovers: the backlog drains, and the calls that hung are adopted, not sent twice.
    notify.set_latency(Duration::ZERO);
    let drained = app.eventually(Duration::from_secs(20), || async { app.count("sent").await == BACKLOG }).await;
    assert!(drained, "backlog not delivered after recovery: {} sent", app.count("sent").await);
    assert!(notify.references().values().all(|n| *n == 1), "a notification was sent twice");
    // Both lanes are exposed: the email/SMS breaker closed again, the push breaker (no push key here) never moved.
    let text = app.metrics().await;
    assert!(text.contains("ebg_va_notify_circuit_state{lane=\"notify\"} 0"), "notify lane closed");
    assert!(text.contains("ebg_va_notify_circuit_state{lane=\"push\"} 0"), "push lane exposed");
    let _database = app.stop().await;
}

async fn deferrals(app: &TestApp) -> f64 {
    app.metric("ebg_retries_total{reason=\"va_notify_circuit_open\"}").await
}

/// Fails every push with VA's 500 while `failing` is set; email and SMS are answered normally.
struct FailingPush {
    failing: std::sync::atomic::AtomicBool,
}

impl ebg_testkit::va_notify::Behaviour for FailingPush {
    fn reply(&self, endpoint: Endpoint, _body: &serde_json::Value) -> Reply {
        if endpoint == Endpoint::Push && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::Status500
        } else {
            Reply::Created
        }
    }
}

/// The push lane has its own breaker, and the claim loop claims per lane: while push's is open, email and
/// SMS keep flowing and the push rows wait unclaimed (no tries spent, no deferral churn); when push
/// recovers they go. Push rows are queued first, so the first claims take them and open the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_push_breaker_holds_push_rows_while_email_and_sms_flow() {
    const EACH: i64 = 200;
    let fakes = Upstreams::start().await;
    fakes.add_person(PARTICIPANT_ID, "JANE", crate::helpers::ICN);
    let failing = Arc::new(FailingPush { failing: true.into() });
    fakes.notify.set_behaviour(failing.clone());
    let app = app()
        .upstreams(&fakes)
        .with_workers()
        .env("EBG_WORKER__CONCURRENCY", CONCURRENCY)
        .env("EBG_WORKER__MAX_ATTEMPTS", 50) // trials retry the same rows; none may go dead in this test
        .env("EBG_NOTIFY__BREAKER_FAILURE_THRESHOLD", 3)
        .env("EBG_NOTIFY__BREAKER_OPEN_SECONDS", 1)
        .spawn()
        .await;
    for feature in [EMAIL_FEATURE, SMS_FEATURE, PUSH_FEATURE] {
        enable_feature(&app.db, feature).await;
    }
    app.state.toggles.refresh().await.unwrap();
    let deferred_before = deferrals(&app).await;
    for (channel, template, due) in [
        ("push", crate::helpers::PUSH_TEMPLATE, "now() - interval '1 minute'"),
        ("email", TEMPLATE_ID, "now()"),
        ("sms", crate::helpers::SMS_TEMPLATE, "now()"),
    ] {
        sqlx::query(&format!(
            "insert into notifications (id, channel, participant_id, template_id, status, next_attempt_at)
             select gen_random_uuid(), $1, $2, $3, 'queued', {due} from generate_series(1, $4)"
        ))
        .bind(channel)
        .bind(PARTICIPANT_ID)
        .bind(template)
        .bind(EACH)
        .execute(&app.db)
        .await
        .unwrap();
    }
    app.state.wake_workers.wake();

    let others_sent = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from notifications where channel <> 'push' and status = 'sent'")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    let flowed = app.eventually(Duration::from_secs(20), || async { others_sent().await == 2 * EACH }).await;
    assert!(flowed, "email and SMS stalled behind the push lane: {} of {} sent", others_sent().await, 2 * EACH);
    let push_state = app.metric("ebg_va_notify_circuit_state{lane=\"push\"}").await;
    let (push_calls, tried, sent): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from notification_attempts a join notifications n on n.id = a.notification_id
                 where n.channel = 'push'),
                (select count(*) from notifications where channel = 'push' and attempts > 0),
                (select count(*) from notifications where channel = 'push' and status = 'sent')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let deferred = deferrals(&app).await - deferred_before;
    let push_requests = fakes.notify.requests_to(Endpoint::Push).len() as i64;
    eprintln!(
        "push lane open: {push_requests} push calls ({push_calls} attempt rows) over {tried} push rows, \
         {deferred} deferrals, state {push_state}; email and SMS all sent"
    );
    assert!(push_state >= 1.0, "the push breaker is still open or half-open: {push_state}");
    assert_eq!(sent, 0, "push is failing: none sent yet");
    assert_eq!(push_calls, push_requests, "an attempt row per push call, none for rows merely held back");
    // The first wave (one per slot) plus one trial per open period; the rest of the push rows untouched.
    assert!(push_requests <= (CONCURRENCY + 25) as i64, "push calls during the outage: {push_requests}");
    assert!(tried <= push_requests, "push rows that spent a try: {tried}");
    assert!(deferred <= CONCURRENCY as f64, "claimed only to be pushed back: {deferred} deferrals");

    // Push recovers: every push row goes, once.
    failing.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let pushed = app.eventually(Duration::from_secs(20), || async { app.count("sent").await == 3 * EACH }).await;
    assert!(pushed, "push rows not delivered after recovery: {} sent of {}", app.count("sent").await, 3 * EACH);
    let after = fakes.notify.requests_to(Endpoint::Push);
    assert_eq!(after.iter().filter(|r| r.status == 201).count() as i64, EACH, "each push row sent once");
    let _database = app.stop().await;
}

/// A shut lane's backlog costs the other lanes' claims nothing: with 50,000 pushes due first (the push
/// breaker open, so the worker claims email and SMS only), the claim reads the email rows it takes and
/// none of the pushes (`notifications_due_by_channel`, one ordered scan per admitted channel). Counted in
/// rows the plan visited, not in time.
#[tokio::test]
async fn a_claim_for_email_and_sms_reads_none_of_a_shut_push_lanes_backlog() {
    let app = app().spawn().await;
    sqlx::query(
        "insert into notifications (id, channel, participant_id, template_id, status, attempts, next_attempt_at)
         select gen_random_uuid(), 'push', (600000000 + g)::text, 'push_template', 'retry_wait', 1,
                now() - interval '2 hours' + g * interval '10 ms'
         from generate_series(1, 50000) g",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "insert into notifications (id, channel, participant_id, template_id, status, next_attempt_at)
         select gen_random_uuid(), 'email', (700000000 + g)::text, $1, 'queued', now() - interval '1 minute'
         from generate_series(1, 100) g",
    )
    .bind(TEMPLATE_ID)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("analyze notifications").execute(&app.db).await.unwrap();

    let mut tx = app.db.begin().await.unwrap();
    let explain = format!("explain (analyze, format json) {}", ebg_notify::outbox::CLAIM_SQL);
    let plan: Value = sqlx::query_scalar(&explain)
        .bind(64_i64)
        .bind(sqlx::postgres::types::PgInterval { months: 0, days: 0, microseconds: 60_000_000 })
        .bind(None::<i32>)
        .bind(ebg_notify::outbox::owner::OWNER_LOCK_CLASS)
        .bind(vec!["email", "sms"])
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let claimed: i64 = sqlx::query_scalar("select count(*) from notifications where status = 'sending'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(claimed, 64, "the claim took a full batch of email");
    let mut visited = 0;
    rows_visited(&plan, &mut visited);
    assert!(visited < 1_000, "rows visited on notifications' indexes: {visited} (the pushes are 50,000)\n{plan:#}");
}

/// Rows the index scans on `notifications` returned or filtered away, in an EXPLAIN (ANALYZE, FORMAT JSON) plan.
fn rows_visited(plan: &Value, total: &mut u64) {
    match plan {
        Value::Array(items) => items.iter().for_each(|i| rows_visited(i, total)),
        Value::Object(node) => {
            let on_notifications = node.get("Relation Name").and_then(Value::as_str) == Some("notifications");
            let scan = node.get("Node Type").and_then(Value::as_str).is_some_and(|k| k.contains("Scan"));
            if on_notifications && scan {
                let count = |key: &str| node.get(key).and_then(Value::as_u64).unwrap_or(0);
                let loops = count("Actual Loops").max(1);
                *total += (count("Actual Rows") + count("Rows Removed by Filter")) * loops;
            }
            node.values().for_each(|v| rows_visited(v, total));
        }
        _ => {}
    }
}
