//! Delivery end to end: accepted request -> worker -> fake BGS -> fake VA Notify, and every way it ends.

use std::collections::HashMap;
use std::time::Duration;

use ebg_testkit::FakeVaNotify;
use ebg_testkit::bgs::BgsReply;
use ebg_testkit::va_notify::Reply;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

async fn attempts_of(app: &TestApp, id: Uuid) -> Vec<(i32, String, Option<i32>)> {
    sqlx::query_as(
        "select attempt, outcome, http_status from notification_attempts where notification_id = $1 order by attempt",
    )
    .bind(id)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn happy_path_sends_exactly_the_va_notify_payload() {
    let (app, notify, bgs) = wired_app(&[]).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    assert_eq!(app.deliver_due().await, 1);

    let accepted = notify.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(
        accepted[0].body.as_ref().unwrap(),
        &json!({
            "template_id": TEMPLATE_ID,
            "recipient_identifier": { "id_type": "PID", "id_value": PARTICIPANT_ID },
            "personalisation": { "host": "www.va.gov", "first_name": "Jane" },
            "reference": id.to_string(),
        })
    );
    assert_eq!(bgs.lookups_for(PARTICIPANT_ID), 1);
    let (status, va_id): (String, Option<Uuid>) =
        sqlx::query_as("select status, va_notify_id from notifications where id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(status, "sent");
    assert!(va_id.is_some());
    assert_eq!(attempts_of(&app, id).await, vec![(1, "sent".to_owned(), Some(201))]);
}

#[tokio::test]
async fn va_notify_outage_is_retried_with_backoff_and_sent_once_after_recovery() {
    let (app, notify, _bgs) = wired_app(&[]).await;
    notify.script([Reply::Status500, Reply::BadGateway, Reply::ServiceUnavailable, Reply::RateLimit]);
    let id = queue_for(&app, PARTICIPANT_ID).await;
    for expected in 1..=4 {
        assert_eq!(app.deliver_due().await, 1);
        let (status, reason) = app.status_of(id).await;
        assert_eq!(status, "retry_wait", "after failure {expected}");
        assert!(reason.unwrap().starts_with("va_notify_"));
    }
    app.deliver_all().await;
    assert_eq!(app.status_of(id).await.0, "sent");
    assert_eq!(notify.accepted_references(), vec![id.to_string()], "sent exactly once");
    let outcomes: Vec<String> = attempts_of(&app, id).await.into_iter().map(|a| a.1).collect();
    assert_eq!(outcomes, ["retryable", "retryable", "retryable", "retryable", "sent"]);
    // Every try carried the same reference, so VA-side records can be reconciled.
    assert!(notify.requests().iter().all(|r| r.reference() == Some(id.to_string().as_str())));
}

#[tokio::test]
async fn retries_back_off_exponentially_from_the_configured_base() {
    let (app, notify, _bgs) =
        wired_app(&[("EBG_WORKER__RETRY_BASE_SECONDS", "30"), ("EBG_WORKER__RETRY_MAX_SECONDS", "3600")]).await;
    notify.script([Reply::Status500, Reply::Status500]);
    let id = queue_for(&app, PARTICIPANT_ID).await;
    let wait_after_try = |app: &TestApp| {
        let db = app.db.clone();
        async move {
            let secs: f64 = sqlx::query_scalar(
                "select extract(epoch from next_attempt_at - now())::float8 from notifications where id = $1",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
            secs
        }
    };
    app.deliver_due().await;
    let first = wait_after_try(&app).await;
    assert!((14.0..=30.5).contains(&first), "first retry in {first}s (base 30 s, equal jitter)");
    assert_eq!(app.deliver_due().await, 0, "not due before its time");
    // Make it due now and fail again: the ceiling doubles.
    sqlx::query("update notifications set next_attempt_at = now() where id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    app.deliver_due().await;
    let second = wait_after_try(&app).await;
    assert!((29.0..=60.5).contains(&second), "second retry in {second}s");
}

#[tokio::test]
async fn a_timed_out_call_that_va_notify_completed_is_adopted_not_sent_again() {
    let (app, notify, _bgs) = wired_app(&[("EBG_NOTIFY__TIMEOUT_MS", "300")]).await;
    notify.script([Reply::Timeout(Duration::from_millis(800))]);
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_due().await;
    assert_eq!(app.status_of(id).await, ("retry_wait".to_owned(), Some("va_notify_timeout".to_owned())));
    // VA Notify creates it after the client gave up; the retry asks by reference before sending.
    let adopted = app
        .eventually(Duration::from_secs(5), || async {
            app.deliver_due().await;
            app.status_of(id).await.0 == "sent"
        })
        .await;
    assert!(adopted);
    assert_eq!(app.status_of(id).await, ("sent".to_owned(), Some("reconciled".to_owned())));
    let refs: Vec<Option<String>> = notify.requests().iter().map(|r| r.reference().map(str::to_owned)).collect();
    assert_eq!(refs, vec![Some(id.to_string())], "one POST: the retry found it instead of sending again");
    assert_eq!(notify.created_with_reference(&id.to_string()), 1);
    let attempts = attempts_of(&app, id).await;
    assert_eq!(attempts, vec![(1, "sent".to_owned(), None)], "the timed-out call is closed as sent");
}

#[tokio::test]
async fn a_400_fails_the_notification_without_retrying() {
    let (app, notify, _bgs) = wired_app(&[]).await;
    notify.script([Reply::BadRequest]);
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let (status, reason) = app.status_of(id).await;
    assert_eq!(status, "failed");
    assert_eq!(reason.as_deref(), Some("va_notify_BadRequestError"));
    assert_eq!(notify.requests_total(), 1, "not retried");
}

#[tokio::test]
async fn the_daily_limit_parks_the_notification_until_tomorrow() {
    let (app, notify, _bgs) = wired_app(&[]).await;
    notify.script([Reply::DailyLimit]);
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let (status, parked_until): (String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("select status, next_attempt_at from notifications where id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(status, "retry_wait");
    let tomorrow = chrono::Utc::now().date_naive().succ_opt().unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    assert!(parked_until >= tomorrow, "parked until {parked_until}");
    assert_eq!(notify.requests_total(), 1, "no hammering");
}

#[tokio::test]
async fn exhausted_attempts_end_dead_with_the_last_reason() {
    let (app, notify, _bgs) = wired_app(&[("EBG_WORKER__MAX_ATTEMPTS", "3")]).await;
    notify.script([Reply::Status500, Reply::Status500, Reply::Status500]);
    let before = app.metric("ebg_dead_letters_total").await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    assert_eq!(app.status_of(id).await, ("dead".to_owned(), Some("va_notify_http_500".to_owned())));
    assert_eq!(notify.requests_total(), 3);
    assert_eq!(app.metric("ebg_dead_letters_total").await, before + 1.0);
}

#[tokio::test]
async fn unknown_people_and_missing_first_names_are_skipped_not_retried() {
    let (app, notify, bgs) = wired_app(&[]).await;
    bgs.add_person_without_first_name("600000002");
    let unknown = {
        let r = app.post_send_email().bearer_auth(token_for("600000001")).header("Accept", "application/json");
        accepted(r.json(&json!({ "template_id": TEMPLATE_ID })).send().await.unwrap()).await.0
    };
    let nameless = {
        let r = app.post_send_email().bearer_auth(token_for("600000002")).header("Accept", "application/json");
        accepted(r.json(&json!({ "template_id": TEMPLATE_ID })).send().await.unwrap()).await.0
    };
    app.deliver_all().await;
    assert_eq!(app.status_of(unknown).await, ("skipped".to_owned(), Some("person_not_found".to_owned())));
    assert_eq!(app.status_of(nameless).await, ("skipped".to_owned(), Some("no_first_name".to_owned())));
    assert_eq!(notify.requests_total(), 0);
    assert_eq!(bgs.lookups_for("600000001"), 1, "looked up once, not retried");
    assert!(attempts_of(&app, unknown).await.is_empty(), "no call, no attempt record");
}

#[tokio::test]
async fn a_transient_bgs_fault_is_retried_then_sent() {
    let (app, notify, bgs) = wired_app(&[]).await;
    bgs.script([BgsReply::TuxedoDown]);
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_due().await;
    assert_eq!(app.status_of(id).await.0, "retry_wait");
    app.deliver_all().await;
    assert_eq!(app.status_of(id).await.0, "sent");
    assert_eq!(notify.accepted_references(), vec![id.to_string()]);
    // The failed lookup counted as try 1 but made no call, so only the call of try 2 is on record.
    assert_eq!(attempts_of(&app, id).await, vec![(2, "sent".to_owned(), Some(201))]);
}

#[tokio::test]
async fn a_bgs_logon_fault_fails_loudly() {
    let (app, notify, bgs) = wired_app(&[]).await;
    bgs.script([BgsReply::LogonNotFound]);
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    assert_eq!(app.status_of(id).await, ("failed".to_owned(), Some("bgs_logon_not_found".to_owned())));
    assert_eq!(notify.requests_total(), 0);
}

#[tokio::test]
async fn two_replicas_on_one_database_never_send_a_row_twice() {
    let notify = FakeVaNotify::start().await;
    notify.set_latency(Duration::from_millis(5));
    let first = app().notify(&notify).with_workers().env("EBG_WORKER__CONCURRENCY", 4).spawn().await;
    let second = app()
        .database(&first.database_url)
        .notify(&notify)
        .with_workers()
        .env("EBG_WORKER__CONCURRENCY", 4)
        .spawn()
        .await;
    first.enable_emails().await;
    second.state.toggles.refresh().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..120u32 {
        let replica = if i % 2 == 0 { &first } else { &second };
        let r = replica
            .post_send_email()
            .bearer_auth(token_for(&(600_100_000 + i).to_string()))
            .header("Accept", "application/json")
            .json(&json!({ "template_id": TEMPLATE_ID }))
            .send()
            .await
            .unwrap();
        ids.push(accepted(r).await.0);
    }
    let done = first.eventually(Duration::from_secs(20), || async { first.count("sent").await == 120 }).await;
    assert!(done, "sent: {}", first.count("sent").await);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in notify.accepted_references() {
        *seen.entry(r).or_default() += 1;
    }
    assert_eq!(seen.len(), 120);
    assert!(seen.values().all(|&n| n == 1), "a reference was sent twice");
}

/// Two replicas on one database with every channel (send_notifications: email, SMS and push per request):
/// each row reaches VA Notify once, email and SMS by reference and push by ICN (one push row per person).
#[tokio::test]
async fn two_replicas_on_one_database_never_send_a_row_of_any_channel_twice() {
    const PEOPLE: u32 = 60;
    let fakes = Upstreams::start().await;
    fakes.notify.set_latency(Duration::from_millis(5));
    for i in 0..PEOPLE {
        fakes.add_person(&(600_400_000 + i).to_string(), "JANE", &icn_for(i));
    }
    let first = app().upstreams(&fakes).with_workers().env("EBG_WORKER__CONCURRENCY", 4).spawn().await;
    let second = app()
        .database(&first.database_url)
        .upstreams(&fakes)
        .with_workers()
        .env("EBG_WORKER__CONCURRENCY", 4)
        .spawn()
        .await;
    for feature in [EMAIL_FEATURE, SMS_FEATURE, PUSH_FEATURE] {
        enable_feature(&first.db, feature).await;
    }
    first.state.toggles.refresh().await.unwrap();
    second.state.toggles.refresh().await.unwrap();
    let body = json!({
        "email_template_id": TEMPLATE_ID,
        "sms_template_id": crate::helpers::SMS_TEMPLATE,
        "push_template_id": crate::helpers::PUSH_TEMPLATE,
    });
    let mut rows = Vec::new();
    for i in 0..PEOPLE {
        let replica = if i % 2 == 0 { &first } else { &second };
        let response = replica
            .client
            .post(format!("{}{SEND_NOTIFICATIONS}", replica.address))
            .bearer_auth(token_for_every_route(&(600_400_000 + i).to_string()))
            .header("Accept", "application/json")
            .json(&body)
            .send()
            .await
            .unwrap();
        let answered = accepted_channels(response).await.expect("accepted");
        assert_eq!(answered.len(), 3);
        rows.extend(answered.into_iter().map(|(channel, id)| (i, channel, id)));
    }
    let total = i64::from(3 * PEOPLE);
    let done = first.eventually(Duration::from_secs(30), || async { first.count("sent").await == total }).await;
    assert!(done, "sent: {} of {total}", first.count("sent").await);

    let references = fakes.notify.references();
    let mut pushes: HashMap<String, usize> = HashMap::new();
    for request in fakes.notify.requests_to(ebg_testkit::va_notify::Endpoint::Push) {
        let icn = request.body.as_ref().unwrap()["recipient_identifier"]["id_value"].as_str().unwrap().to_owned();
        *pushes.entry(icn).or_default() += 1;
    }
    for (i, channel, id) in &rows {
        let sends = match channel.as_str() {
            "push" => pushes.get(&icn_for(*i)).copied(),
            _ => references.get(&id.to_string()).copied(),
        };
        assert_eq!(sends, Some(1), "{channel} row {id} sent once");
    }
    assert_eq!(references.len() as u32, 2 * PEOPLE, "nothing else reached VA Notify");
    assert_eq!(pushes.len() as u32, PEOPLE);
}

#[tokio::test]
async fn graceful_shutdown_finishes_deliveries_in_flight() {
    let notify = FakeVaNotify::start().await;
    notify.set_latency(Duration::from_millis(400));
    let app = app().notify(&notify).with_workers().spawn().await;
    app.enable_emails().await;
    let db = app.db.clone();
    let url = app.database_url.clone();
    let id = queue_for(&app, PARTICIPANT_ID).await;
    // Wait until the call is in flight, then stop.
    let in_flight = app.eventually(Duration::from_secs(5), || async { notify.requests_total() == 1 }).await;
    assert!(in_flight);
    let _database = app.stop().await;
    let _ = db;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let status: String =
        sqlx::query_scalar("select status from notifications where id = $1").bind(id).fetch_one(&pool).await.unwrap();
    assert_eq!(status, "sent", "the in-flight delivery was finished and recorded before exit");
}

#[tokio::test]
async fn a_request_accepted_by_one_replica_wakes_the_workers_of_another() {
    let notify = FakeVaNotify::start().await;
    // The accepting replica runs no workers; the delivering one would poll only every 30 s.
    let acceptor = app().notify(&notify).spawn().await;
    let deliverer = app()
        .database(&acceptor.database_url)
        .notify(&notify)
        .with_workers()
        .env("EBG_WORKER__POLL_INTERVAL_MS", 30_000)
        .spawn()
        .await;
    acceptor.enable_emails().await;
    let running = deliverer
        .eventually(Duration::from_secs(5), || async {
            deliverer.state.workers_running.load(std::sync::atomic::Ordering::SeqCst)
        })
        .await;
    assert!(running);
    tokio::time::sleep(Duration::from_millis(300)).await; // let the delivering loop go idle and its listener start
    let id = queue_for(&acceptor, PARTICIPANT_ID).await;
    let sent = acceptor.eventually(Duration::from_secs(3), || async { acceptor.status_of(id).await.0 == "sent" }).await;
    assert!(sent, "woken through Postgres, not by its 30 s poll");
}

#[tokio::test]
async fn an_open_circuit_defers_without_spending_a_try_or_calling_va_notify() {
    let (app, notify, _bgs) = wired_app(&[("EBG_NOTIFY__BREAKER_FAILURE_THRESHOLD", "1")]).await;
    notify.script([Reply::Status500]);
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_due().await; // the 500 opens the breaker
    sqlx::query("update notifications set next_attempt_at = now() where id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    app.deliver_due().await; // refused locally: the breaker is open
    let (status, attempts, wait): (String, i32, f64) = sqlx::query_as(
        "select status, attempts, extract(epoch from next_attempt_at - now())::float8 from notifications where id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("retry_wait", 1), "the refused try is given back");
    assert!(wait > 20.0, "comes back after the breaker's open period, not at once ({wait}s)");
    assert_eq!(notify.requests_total(), 1, "no call while open");
    assert_eq!(attempts_of(&app, id).await.len(), 1, "no attempt recorded for a call never made");
}

#[tokio::test]
async fn replay_requeues_dead_notifications_once_the_cause_is_fixed() {
    let (app, notify, _bgs) = wired_app(&[("EBG_WORKER__MAX_ATTEMPTS", "1")]).await;
    notify.script([Reply::Status500]);
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    assert_eq!(app.status_of(id).await.0, "dead");

    let replay = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ebg-notify"))
            .arg("replay")
            .args(args)
            .env("EBG_DATABASE__URL", &app.database_url)
            .env("EBG_TELEMETRY__LOG_FILTER", "error")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(replay(&["--status", "dead", "--dry-run"]).contains("would requeue 1"));
    assert_eq!(app.status_of(id).await.0, "dead", "a dry run changes nothing");
    assert!(replay(&["--status", "dead", "--id", &id.to_string()]).contains("requeued 1"));
    assert_eq!(app.status_of(id).await, ("queued".to_owned(), Some("replayed".to_owned())));

    app.deliver_all().await;
    assert_eq!(app.status_of(id).await.0, "sent");
    assert_eq!(notify.accepted_references(), vec![id.to_string()]);
    assert!(replay(&["--status", "dead"]).contains("requeued 0"), "nothing left to replay");
}
