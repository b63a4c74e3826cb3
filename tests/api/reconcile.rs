//! Calls whose outcome is unknown are reconciled with VA Notify by reference before anything is sent
//! again, and rows leased by a process that died are taken at once.

use std::time::Duration;

use ebg_testkit::va_notify::Reply;
use ebg_testkit::{FakeBgs, FakeVaNotify, TcpProxy};
use uuid::Uuid;

use crate::helpers::*;

fn postgres_addr() -> std::net::SocketAddr {
    let url = url::Url::parse(&server_url()).unwrap();
    let port = url.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(url.host_str().unwrap(), port)).unwrap().next().unwrap()
}

async fn attempts_of(db: &sqlx::PgPool, id: Uuid) -> Vec<(i32, String)> {
    sqlx::query_as("select attempt, outcome from notification_attempts where notification_id = $1 order by attempt")
        .bind(id)
        .fetch_all(db)
        .await
        .unwrap()
}

/// The database link fails after VA Notify answered 201 and before the outcome was written, and the
/// process is gone: a second replica takes the row at once (its owner's lock is free, though the
/// 60 s lease is not over), finds the notification by reference and adopts it instead of sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_201_whose_outcome_was_never_written_is_adopted_by_another_replica_at_once() {
    let notify = FakeVaNotify::start().await;
    notify.set_latency(Duration::from_millis(400));
    let bgs = FakeBgs::start().await;
    bgs.add_person(PARTICIPANT_ID, "JANE");
    let proxy = TcpProxy::start(postgres_addr()).await.unwrap();
    // Named with the run's prefix and dropped when the test passes (declared first, so dropped last).
    let test_database = TestDatabase::fresh();
    let database = test_database.name.clone();
    let first = app()
        .database(&format!("postgres://postgres@{}/{database}", proxy.addr()))
        .notify(&notify)
        .bgs(&bgs)
        .with_workers()
        .env("EBG_WORKER__LEASE_SECONDS", 60)
        // Its outcome write gives up quickly instead of waiting for the link to come back.
        .env("EBG_DATABASE__ACQUIRE_TIMEOUT_MS", 300)
        .spawn()
        .await;
    first.enable_emails().await;
    let id = queue_for(&first, PARTICIPANT_ID).await;
    assert!(first.eventually(Duration::from_secs(5), || async { notify.requests_total() == 1 }).await);
    // The call is at VA Notify now: cut the database before its 201 (400 ms later) can be recorded.
    proxy.stall();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(notify.created_with_reference(&id.to_string()), 1);
    drop(first); // the process goes away; restoring the link closes its connections, its owner lock too
    proxy.restore();

    let second = app().database(&format!("{}/{database}", server_url())).notify(&notify).bgs(&bgs).spawn().await;
    let (status, _) = second.status_of(id).await;
    assert_eq!(status, "sending", "the outcome was never written");
    let adopted = second
        .eventually(Duration::from_secs(8), || async {
            second.deliver_due().await;
            second.status_of(id).await.0 == "sent"
        })
        .await;
    assert!(adopted, "the row was not taken before its lease expired");
    assert_eq!(second.status_of(id).await, ("sent".to_owned(), Some("reconciled".to_owned())));
    assert_eq!(notify.requests_total(), 1, "never sent a second time");
    assert_eq!(notify.created_with_reference(&id.to_string()), 1);
    let va_id: Option<Uuid> = sqlx::query_scalar("select va_notify_id from notifications where id = $1")
        .bind(id)
        .fetch_one(&second.db)
        .await
        .unwrap();
    assert!(va_id.is_some(), "VA's id is adopted as va_notify_id");
    assert_eq!(attempts_of(&second.db, id).await, vec![(1, "sent".to_owned())]);
    assert!(second.metric("ebg_reconciliations_total{result=\"adopted\"}").await >= 1.0);
    assert!(
        second.metric("ebg_deliveries_total{status=\"sent\",reason=\"reconciled\",channel=\"email\"}").await >= 1.0
    );
    let _second_database = second.stop().await;
}

/// Puts a row in the state a crash mid-call leaves: leased, lease over, its call `in_flight`.
async fn crash_mid_call(app: &TestApp, id: Uuid) {
    sqlx::query(
        "update notifications set status = 'sending', attempts = 1, lease_token = gen_random_uuid(),
             next_attempt_at = now() - interval '1 second' where id = $1",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "insert into notification_attempts (notification_id, attempt, started_at) values ($1, 1, now() - interval '10 seconds')",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_lookup_sends_nothing_and_is_retried_then_an_absent_notification_is_sent() {
    let (app, notify, _bgs) = wired_app(&[]).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    crash_mid_call(&app, id).await;
    notify.script_lookups([Reply::Status500]);

    assert_eq!(app.deliver_due().await, 1);
    assert_eq!(notify.requests_total(), 0, "no send on a lookup that failed");
    assert_eq!(app.status_of(id).await, ("retry_wait".to_owned(), Some("va_notify_lookup_http_500".to_owned())));

    app.deliver_all().await;
    assert_eq!(app.status_of(id).await, ("sent".to_owned(), None));
    assert_eq!(notify.accepted_references(), vec![id.to_string()], "sent once VA Notify said it had none");
    assert_eq!(notify.lookups_total(), 2);
    assert_eq!(
        attempts_of(&app.db, id).await,
        vec![(1, "not_received".to_owned()), (2, "lookup_failed".to_owned()), (3, "sent".to_owned())]
    );
}

#[tokio::test]
async fn a_row_crashed_mid_call_is_not_looked_up_before_the_call_could_have_ended() {
    let (app, notify, _bgs) = wired_app(&[("EBG_NOTIFY__TIMEOUT_MS", "1000")]).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    crash_mid_call(&app, id).await;
    sqlx::query("update notification_attempts set started_at = now() where notification_id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    app.deliver_due().await;
    assert_eq!(notify.lookups_total(), 0, "VA Notify may still be creating it");
    assert_eq!(app.status_of(id).await.1.as_deref(), Some("reconcile_wait"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.deliver_all().await;
    assert_eq!(notify.lookups_total(), 1);
    assert_eq!(notify.accepted_references(), vec![id.to_string()]);
}
