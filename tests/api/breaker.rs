//! A hanging VA Notify must not churn the queue: while the breaker is open, or its half-open trial
//! call is outstanding, nothing is claimed, so deferrals and database writes follow the trials, not
//! the backlog. Breaker timings are shrunk (200 ms client timeout, 1 s open) to fit the hang in seconds.

use std::time::Duration;

use ebg_testkit::{FakeBgs, FakeVaNotify};

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
