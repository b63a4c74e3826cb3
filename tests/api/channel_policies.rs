//! The channel policies wired into the worker and the callback path (CHANNELS.md §5–§7): SMS quiet
//! hours, dry runs per channel, the universal-link template swap and per-channel resends. The real app,
//! real PostgreSQL, the fake VA Notify, BGS and MPI (`helpers::wired`).
//!
//! Quiet hours mostly run on the real clock: those tests configure a window around the current time (in
//! UTC), so the worker's "now" is inside it. One pins the worker's clock (`Deliverer::clock`) to 22:30
//! Eastern to check vets-api's window as configured, whatever the hour the test runs at.

use chrono::{DateTime, Duration, Utc};
use ebg_notify::outbox::quiet_hours::slot_minutes;
use ebg_testkit::va_notify::Endpoint;
use serde_json::json;
use uuid::Uuid;

use crate::callbacks::post_bearer;
use crate::helpers::{
    PARTICIPANT_ID, PUSH_FEATURE, PUSH_PATH, PUSH_TEMPLATE, QUIET_HOURS_SPREAD_MINUTES as SPREAD_MINUTES, SMS_FEATURE,
    SMS_PATH, SMS_TEMPLATE, TEMPLATE_ID, Wired, enable, post, row, single, window_around_now, wired_on, wired_with,
};

async fn send_sms(w: &Wired) -> Uuid {
    single(post(&w.app, SMS_PATH, PARTICIPANT_ID, json!({"template_id": SMS_TEMPLATE}), None).await).await
}

/// (status, status_reason, attempts, sends, next_attempt_at) of a row.
async fn state(w: &Wired, id: Uuid) -> (String, Option<String>, i32, i32, Option<DateTime<Utc>>) {
    sqlx::query_as("select status, status_reason, attempts, sends, next_attempt_at from notifications where id = $1")
        .bind(id)
        .fetch_one(&w.app.db)
        .await
        .unwrap()
}

/// Makes a deferred row due now, as if its time had come while the window still held.
async fn make_due(w: &Wired, id: Uuid) {
    sqlx::query("update notifications set next_attempt_at = now() where id = $1")
        .bind(id)
        .execute(&w.app.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_sms_in_quiet_hours_is_deferred_to_the_window_end_plus_its_slot_without_spending_a_try() {
    let (settings, end) = window_around_now("defer");
    let w = wired_with(&settings).await;
    enable(&w.app, SMS_FEATURE).await;
    let series = r#"ebg_retries_total{reason="sms_quiet_hours"}"#;
    let before = w.app.metric(series).await;
    let id = send_sms(&w).await;
    w.app.deliver_all().await;

    let expected = end + Duration::minutes(i64::from(slot_minutes(id, SPREAD_MINUTES)));
    let deferred = ("queued".to_owned(), Some("sms_quiet_hours".to_owned()), 0, 0, Some(expected));
    assert_eq!(state(&w, id).await, deferred, "back to queued at the window's end + slot, no try spent");
    assert!(w.notify.requests_to(Endpoint::Sms).is_empty(), "nothing sent in quiet hours");
    assert_eq!(w.app.metric(series).await, before + 1.0);

    // Asked again on the next try, the same row gets the same slot.
    make_due(&w, id).await;
    w.app.deliver_all().await;
    assert_eq!(state(&w, id).await, deferred);
    assert!(w.notify.requests_to(Endpoint::Sms).is_empty());
    assert_eq!(w.app.metric(series).await, before + 2.0);
}

#[tokio::test]
async fn block_mode_suppresses_an_sms_in_quiet_hours_and_counts_it() {
    let (settings, _) = window_around_now("block");
    let w = wired_with(&settings).await;
    enable(&w.app, SMS_FEATURE).await;
    let series = r#"ebg_deliveries_total{status="suppressed",reason="sms_quiet_hours",channel="sms"}"#;
    let before = w.app.metric(series).await;
    let id = send_sms(&w).await;
    w.app.deliver_all().await;

    let (status, reason, attempts, sends, _) = state(&w, id).await;
    assert_eq!((status.as_str(), reason.as_deref(), attempts, sends), ("suppressed", Some("sms_quiet_hours"), 0, 0));
    assert!(w.notify.requests_to(Endpoint::Sms).is_empty());
    assert_eq!(w.app.metric(series).await, before + 1.0);
}

#[tokio::test]
async fn quiet_hours_leave_email_and_push_alone() {
    let (settings, _) = window_around_now("block");
    let w = wired_with(&settings).await;
    enable(&w.app, PUSH_FEATURE).await;
    let push = single(post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": PUSH_TEMPLATE}), None).await).await;
    let (email, _) = crate::helpers::request_for(&w.app, PARTICIPANT_ID).await;
    w.app.deliver_all().await;
    assert_eq!(row(&w.app, push).await.1, "sent");
    assert_eq!(row(&w.app, email).await.1, "sent");
}

/// An SMS callback as VA Notify sends it (`notification_type` sms, provider pinpoint).
fn sms_callback(va_id: Uuid, reference: Uuid, status: &str, reason: &str) -> String {
    json!({
        "id": va_id, "reference": reference, "to": "+15555550100", "status": status,
        "created_at": "2025-01-02T03:04:05.000006Z", "completed_at": "2025-01-02T03:05:06.000007Z",
        "sent_at": "2025-01-02T03:04:30.123456Z", "notification_type": "sms", "status_reason": reason,
        "provider": "pinpoint", "provider_payload": null,
    })
    .to_string()
}

async fn va_id(w: &Wired, id: Uuid) -> Uuid {
    sqlx::query_scalar("select va_notify_id from notifications where id = $1")
        .bind(id)
        .fetch_one(&w.app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_resend_that_falls_in_quiet_hours_is_deferred_too() {
    let resend_now = [("EBG_SMS__RESEND_DELAY_SECONDS", "0".to_owned())];
    let w = wired_with(&resend_now).await;
    enable(&w.app, SMS_FEATURE).await;
    let id = send_sms(&w).await;
    w.app.deliver_all().await;
    assert_eq!(row(&w.app, id).await.1, "sent");
    let database = w.app.database_url.clone();
    let guard = w.app.stop().await;

    // Restarted inside quiet hours; VA Notify then reports a retryable temporary failure.
    let (mut settings, end) = window_around_now("defer");
    settings.extend(resend_now);
    let w = wired_on(&settings, Some(&database)).await;
    let callback = sms_callback(va_id(&w, id).await, id, "temporary-failure", "Retryable - carrier unavailable");
    assert_eq!(post_bearer(&w.app, callback).await.status(), 200);
    w.app.deliver_all().await;

    let expected = end + Duration::minutes(i64::from(slot_minutes(id, SPREAD_MINUTES)));
    let (status, reason, _, sends, due) = state(&w, id).await;
    assert_eq!((reason.as_deref(), sends, due), (Some("sms_quiet_hours"), 1, Some(expected)), "{status}");
    assert!(matches!(status.as_str(), "queued" | "retry_wait"), "{status}");
    assert!(w.notify.requests_to(Endpoint::Sms).is_empty(), "the resend waits for the window's end");
    drop(w);
    drop(guard);
}

/// Sends one notification per channel with the given dry-run settings and returns the rows' (channel, status,
/// reason) after delivery, and the calls the fake received.
async fn one_of_each(dry_run: &[(&'static str, String)]) -> (Vec<(String, String, Option<String>)>, usize) {
    let w = wired_with(dry_run).await;
    enable(&w.app, SMS_FEATURE).await;
    enable(&w.app, PUSH_FEATURE).await;
    let sms = send_sms(&w).await;
    let push = single(post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": PUSH_TEMPLATE}), None).await).await;
    let (email, _) = crate::helpers::request_for(&w.app, PARTICIPANT_ID).await;
    w.app.deliver_all().await;
    let mut rows = Vec::new();
    for id in [email, sms, push] {
        let (channel, status, reason, _, _) = row(&w.app, id).await;
        rows.push((channel, status, reason));
    }
    let calls = [Endpoint::Email, Endpoint::Sms, Endpoint::Push].iter().map(|e| w.notify.requests_to(*e).len()).sum();
    (rows, calls)
}

#[tokio::test]
async fn each_channel_in_dry_run_ends_skipped_without_a_call() {
    for (key, channel) in [("EBG_DRY_RUN__EMAIL", "email"), ("EBG_DRY_RUN__SMS", "sms"), ("EBG_DRY_RUN__PUSH", "push")]
    {
        let (rows, calls) = one_of_each(&[(key, "true".to_owned())]).await;
        for (row_channel, status, reason) in &rows {
            if row_channel == channel {
                assert_eq!((status.as_str(), reason.as_deref()), ("skipped", Some("dry_run")), "{channel}");
            } else {
                assert_eq!(status, "sent", "{row_channel} with {channel} in dry run");
            }
        }
        assert_eq!(calls, 2, "only the other two channels called VA Notify ({channel} in dry run)");
    }
}

#[tokio::test]
async fn dry_run_comes_after_resolution_and_toggle() {
    // The SMS toggle is off: the row is suppressed by the toggle, not recorded as a dry run.
    let w = wired_with(&[("EBG_DRY_RUN__SMS", "true".to_owned())]).await;
    let id = send_sms(&w).await;
    w.app.deliver_all().await;
    assert_eq!(row(&w.app, id).await.2.as_deref(), Some("toggle_disabled"));
}

/// The local profile's template file (`config/templates/local.toml`): `TEMPLATE_ID` is its default template.
const MOBILE_LINK_TEMPLATE: &str = "7c4d9f13-62c1-4e6b-9e1f-3d1fa04d2b22";
const UNIVERSAL_LINK: &str = "event_bus_gateway_letter_ready_email_universal_link";
/// Not in the template file.
const PLAIN_TEMPLATE: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

/// Sends one email with `template` and returns (the template VA Notify got, the row's sent_template_id,
/// the history's template_id and sent_template_id).
async fn email_with(w: &Wired, template: &str) -> (String, Option<String>, serde_json::Value, serde_json::Value) {
    let calls_before = w.notify.requests_to(Endpoint::Email).len();
    let response = w
        .app
        .post_send_email()
        .bearer_auth(crate::helpers::token_for(PARTICIPANT_ID))
        .header("Accept", "application/json")
        .json(&json!({ "template_id": template }))
        .send()
        .await
        .unwrap();
    let (id, _) = crate::helpers::accepted(response).await;
    w.app.deliver_all().await;
    let calls = w.notify.requests_to(Endpoint::Email);
    assert_eq!(calls.len(), calls_before + 1);
    let sent = calls[calls_before].body.as_ref().unwrap()["template_id"].as_str().unwrap().to_owned();
    let stored: Option<String> = sqlx::query_scalar("select sent_template_id from notifications where id = $1")
        .bind(id)
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    let history: serde_json::Value = w
        .app
        .client
        .get(format!("{}/admin/notifications/{id}", w.app.address))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (sent, stored, history["template_id"].clone(), history["sent_template_id"].clone())
}

#[tokio::test]
async fn the_universal_link_feature_swaps_only_swappable_email_templates() {
    // The same email three times: no duplicate window.
    let w = wired_with(&[("EBG_ACCEPT__DUPLICATE_WINDOW_SECONDS", "0".to_owned())]).await;
    // Off: sent as requested, nothing recorded.
    let (sent, stored, requested, shown) = email_with(&w, TEMPLATE_ID).await;
    assert_eq!((sent.as_str(), stored), (TEMPLATE_ID, None));
    assert_eq!((requested, shown), (json!(TEMPLATE_ID), json!(null)));

    // On for this participant (an actor gate, keyed by participant id): the mobile-link template is sent.
    crate::helpers::enable_actor(&w.app, UNIVERSAL_LINK, PARTICIPANT_ID).await;
    let (sent, stored, requested, shown) = email_with(&w, TEMPLATE_ID).await;
    assert_eq!((sent.as_str(), stored.as_deref()), (MOBILE_LINK_TEMPLATE, Some(MOBILE_LINK_TEMPLATE)));
    assert_eq!((requested, shown), (json!(TEMPLATE_ID), json!(MOBILE_LINK_TEMPLATE)), "history shows both");

    // A template without a pair is sent as requested even with the feature on.
    let (sent, stored, _, shown) = email_with(&w, PLAIN_TEMPLATE).await;
    assert_eq!((sent.as_str(), stored, shown), (PLAIN_TEMPLATE, None, json!(null)));
}

#[tokio::test]
async fn sms_callbacks_resend_with_the_sms_budget_and_delay() {
    // Email's budget stays 5; SMS gets two sends, resent at once.
    let settings = [("EBG_SMS__MAX_SENDS", "2".to_owned()), ("EBG_SMS__RESEND_DELAY_SECONDS", "0".to_owned())];
    let w = wired_with(&settings).await;
    enable(&w.app, SMS_FEATURE).await;
    let id = send_sms(&w).await;
    w.app.deliver_all().await;
    let retryable = |va| sms_callback(va, id, "temporary-failure", "Retryable - carrier unavailable");

    assert_eq!(post_bearer(&w.app, retryable(va_id(&w, id).await)).await.status(), 200);
    let (status, _, _, sends, _) = state(&w, id).await;
    assert_eq!((status.as_str(), sends), ("queued", 1), "the first Retryable failure is resent");
    w.app.deliver_all().await;
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 2, "resent at once (sms.resend_delay_seconds = 0)");

    assert_eq!(post_bearer(&w.app, retryable(va_id(&w, id).await)).await.status(), 200);
    let (status, _, _, sends, _) = state(&w, id).await;
    assert_eq!((status.as_str(), sends), ("dead", 2), "sms.max_sends = 2 is spent");
    w.app.deliver_all().await;
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 2);
}

#[tokio::test]
async fn an_sms_callback_moves_the_row_like_an_emails() {
    let w = wired_with(&[]).await;
    enable(&w.app, SMS_FEATURE).await;
    let id = send_sms(&w).await;
    w.app.deliver_all().await;
    let delivered = sms_callback(va_id(&w, id).await, id, "delivered", "");
    assert_eq!(post_bearer(&w.app, delivered).await.status(), 200);
    assert_eq!(state(&w, id).await.0, "delivered");
}

/// An Eastern wall-clock time on a December day (EST, UTC-5) as an instant.
fn eastern(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    use chrono::TimeZone;
    chrono_tz::America::New_York.with_ymd_and_hms(2026, 12, day, hour, minute, 0).single().unwrap().with_timezone(&Utc)
}

/// vets-api's window, 21:00–09:00 Eastern, with the worker's clock pinned to 22:30 Eastern: the SMS goes
/// in [09:00, 12:00) Eastern next morning, at the same slot however often it is asked, and a resend that
/// falls in the next night's window waits for the next morning's slot too.
#[tokio::test]
async fn with_the_clock_at_2230_eastern_an_sms_and_its_resend_wait_for_the_slot_next_morning() {
    let settings = [
        ("EBG_SMS__QUIET_HOURS_MODE", "defer".to_owned()),
        ("EBG_SMS__QUIET_HOURS_ZONE", "America/New_York".to_owned()),
        ("EBG_SMS__QUIET_HOURS_START", "21:00".to_owned()),
        ("EBG_SMS__QUIET_HOURS_END", "09:00".to_owned()),
        ("EBG_SMS__QUIET_HOURS_SPREAD_MINUTES", SPREAD_MINUTES.to_string()),
        ("EBG_SMS__RESEND_DELAY_SECONDS", "0".to_owned()),
    ];
    let w = wired_with(&settings).await;
    enable(&w.app, SMS_FEATURE).await;
    let clock = w.app.state.deliverer.clock().clone();
    clock.pin(eastern(1, 22, 30));
    let id = send_sms(&w).await;
    w.app.deliver_due().await;

    let slot = Duration::minutes(i64::from(slot_minutes(id, SPREAD_MINUTES)));
    let morning = eastern(2, 9, 0) + slot;
    assert!(eastern(2, 9, 0) <= morning && morning < eastern(2, 12, 0), "{morning}");
    let deferred = ("queued".to_owned(), Some("sms_quiet_hours".to_owned()), 0, 0, Some(morning));
    assert_eq!(state(&w, id).await, deferred, "due next morning at 09:00 ET + the row's slot, no try spent");
    assert!(w.notify.requests_to(Endpoint::Sms).is_empty());

    // Asked again later that night (the row made due again), the same row gets the same slot.
    clock.pin(eastern(1, 23, 59));
    make_due(&w, id).await;
    w.app.deliver_due().await;
    assert_eq!(state(&w, id).await, deferred);

    // Its slot comes: it goes.
    clock.pin(morning);
    make_due(&w, id).await;
    w.app.deliver_due().await;
    assert_eq!(state(&w, id).await.0, "sent");
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 1);

    // A temporary failure reported at 22:30 the next night: the resend is due at once
    // (sms.resend_delay_seconds = 0), falls in the window, and waits for the morning after.
    clock.pin(eastern(2, 22, 30));
    let failed = sms_callback(va_id(&w, id).await, id, "temporary-failure", "Retryable - carrier unavailable");
    assert_eq!(post_bearer(&w.app, failed).await.status(), 200);
    let (status, _, _, sends, _) = state(&w, id).await;
    assert_eq!((status.as_str(), sends), ("queued", 1), "resend queued");
    w.app.deliver_due().await;
    let (status, reason, _, sends, next) = state(&w, id).await;
    assert_eq!((reason.as_deref(), sends), (Some("sms_quiet_hours"), 1));
    assert!(matches!(status.as_str(), "queued" | "retry_wait"), "pending again: {status}");
    assert_eq!(next, Some(eastern(3, 9, 0) + slot), "the resend waits for the same slot the next morning");
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 1, "not resent in quiet hours");
}
