//! Delivery-status callbacks (SPEC §7): auth by token or signature, state moves, resends, and bad input.

use ebg_testkit::va_notify::Reply;
use ebg_testkit::{FakeBgs, FakeVaNotify};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// App wired to both fakes, toggle on, resends without delay; participants 600000001..=600000009
/// are known to BGS too.
pub async fn wired(extra: &[(&str, &str)]) -> (TestApp, FakeVaNotify, FakeBgs) {
    let mut settings = vec![("EBG_CALLBACKS__RESEND_DELAY_SECONDS", "0")];
    settings.extend_from_slice(extra);
    let (app, notify, bgs) = wired_app(&settings).await;
    for n in 1..=9 {
        bgs.add_person(&format!("60000000{n}"), "JOHN");
    }
    (app, notify, bgs)
}

/// The VA Notify id of the notification's latest send.
pub async fn va_id(app: &TestApp, id: Uuid) -> Uuid {
    sqlx::query_scalar("select va_notify_id from notifications where id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// A callback body exactly as VA Notify orders its fields (the recipient address included).
pub fn callback_body(va_id: Option<Uuid>, reference: Option<Uuid>, status: &str, reason: Option<&str>) -> String {
    format!(
        r#"{{"id": {}, "reference": {}, "to": "veteran@example.com", "status": "{status}", "created_at": "2025-01-02T03:04:05.000006Z", "completed_at": "2025-01-02T03:05:06.000007Z", "sent_at": "2025-01-02T03:04:30.123456Z", "notification_type": "email", "status_reason": {}, "provider": "ses", "provider_payload": null}}"#,
        va_id.map_or("null".to_owned(), |v| format!("\"{v}\"")),
        reference.map_or("null".to_owned(), |v| format!("\"{v}\"")),
        reason.map_or("null".to_owned(), |r| format!("\"{r}\"")),
    )
}

/// Posts a callback authenticated with the bearer token.
pub async fn post_bearer(app: &TestApp, body: String) -> reqwest::Response {
    app.client
        .post(format!("{}/va_notify/callbacks", app.address))
        .bearer_auth(CALLBACK_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Posts a callback signed the way VA Notify signs it, with the fake's API secret.
pub async fn post_signed(app: &TestApp, notify: &FakeVaNotify, body: String) -> reqwest::Response {
    let signature = ebg_notify::callbacks::signature::sign(notify.secret(), body.as_bytes()).unwrap();
    app.client
        .post(format!("{}/va_notify/callbacks", app.address))
        .header("x-enp-signature", signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn events(app: &TestApp, id: Uuid) -> Vec<(String, String)> {
    sqlx::query_as("select status, effect from notification_events where notification_id = $1 order by id")
        .bind(id)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn bearer_tokens_and_signatures_are_accepted_and_anything_else_is_401() {
    let (app, notify, _bgs) = wired(&[("EBG_CALLBACKS__EXTRA_TOKENS", "[\"rotated-callback-token\"]")]).await;
    let url = format!("{}/va_notify/callbacks", app.address);
    let body = callback_body(Some(Uuid::new_v4()), None, "delivered", None);

    assert_eq!(post_bearer(&app, body.clone()).await.status(), 200);
    assert_eq!(post_signed(&app, &notify, body.clone()).await.status(), 200);
    let extra = app.client.post(&url).bearer_auth("rotated-callback-token").body(body.clone()).send().await.unwrap();
    assert_eq!(extra.status(), 200, "extra tokens are accepted too");

    let unauthorized = [
        app.client.post(&url).body(body.clone()),
        app.client.post(&url).bearer_auth("wrong").body(body.clone()),
        app.client.post(&url).header("x-enp-signature", "00".repeat(32)).body(body.clone()),
        // A signature of another body.
        app.client
            .post(&url)
            .header(
                "x-enp-signature",
                ebg_notify::callbacks::signature::sign(notify.secret(), b"{\"id\": null}").unwrap(),
            )
            .body(body.clone()),
        // Upper-case hex is not what VA sends.
        app.client
            .post(&url)
            .header(
                "x-enp-signature",
                ebg_notify::callbacks::signature::sign(notify.secret(), body.as_bytes()).unwrap().to_uppercase(),
            )
            .body(body.clone()),
    ];
    for request in unauthorized {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({ "message": "Unauthorized" }));
    }
}

#[tokio::test]
async fn bad_bodies_are_4xx_never_5xx() {
    let (app, _notify, _bgs) = wired(&[]).await;
    for body in
        ["{", "[]", "null", "\"x\"", r#"{"status": 5}"#, r#"{"id": "not-a-uuid", "status": "delivered"}"#, "\u{0}"]
    {
        let r = post_bearer(&app, body.to_owned()).await;
        assert_eq!(r.status(), 400, "{body}");
    }
    let huge = format!(r#"{{"status": "delivered", "pad": "{}"}}"#, "x".repeat(70 * 1024));
    assert_eq!(post_bearer(&app, huge.clone()).await.status(), 413);
    let r = app.client.post(format!("{}/va_notify/callbacks", app.address)).body(huge).send().await.unwrap();
    assert_eq!(r.status(), 401, "no credentials: nothing about the body is revealed");
}

#[tokio::test]
async fn unknown_notifications_are_200_and_counted() {
    let (app, _notify, _bgs) = wired(&[]).await;
    let series = r#"ebg_callbacks_unmatched_total{status="delivered"}"#;
    let before = app.metric(series).await;
    let r = post_bearer(&app, callback_body(Some(Uuid::new_v4()), Some(Uuid::new_v4()), "delivered", None)).await;
    assert_eq!(r.status(), 200);
    assert!(app.metric(series).await > before);
    let stored: i64 = sqlx::query_scalar("select count(*) from notification_events").fetch_one(&app.db).await.unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn delivered_is_final_and_late_in_flight_statuses_are_only_recorded() {
    let (app, notify, _bgs) = wired(&[]).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let va = va_id(&app, id).await;
    assert_eq!(post_bearer(&app, callback_body(Some(va), Some(id), "sending", None)).await.status(), 200);
    assert_eq!(app.status_of(id).await.0, "sent", "in-flight statuses move nothing");
    assert_eq!(post_signed(&app, &notify, callback_body(Some(va), Some(id), "delivered", None)).await.status(), 200);
    assert_eq!(app.status_of(id).await, ("delivered".to_owned(), None));
    // Late and repeated callbacks: recorded, never a step back.
    for status in ["sending", "sent", "permanent-failure", "delivered"] {
        assert_eq!(post_bearer(&app, callback_body(Some(va), Some(id), status, Some("late"))).await.status(), 200);
    }
    assert_eq!(app.status_of(id).await.0, "delivered");
    let effects: Vec<String> = events(&app, id).await.into_iter().map(|e| e.1).collect();
    assert_eq!(effects, ["recorded", "moved", "recorded", "recorded", "recorded", "recorded"]);
    // The recipient address is not stored anywhere.
    let dump: String = sqlx::query_scalar("select coalesce(string_agg(e::text, ''), '') from notification_events e")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!dump.contains("veteran@example.com") && dump.contains("ses"), "{dump}");
}

#[tokio::test]
async fn a_callback_without_reference_matches_by_va_notify_id() {
    let (app, _notify, _bgs) = wired(&[]).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let va = va_id(&app, id).await;
    post_bearer(&app, callback_body(Some(va), None, "permanent-failure", Some("Bounced"))).await;
    assert_eq!(app.status_of(id).await, ("permanent_failure".to_owned(), Some("Bounced".to_owned())));
}

#[tokio::test]
async fn non_retryable_temporary_failures_are_final() {
    let (app, notify, _bgs) = wired(&[]).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    post_bearer(&app, callback_body(Some(va_id(&app, id).await), Some(id), "temporary-failure", Some("Mailbox full")))
        .await;
    assert_eq!(app.status_of(id).await.0, "temporary_failure");
    app.deliver_all().await;
    assert_eq!(notify.requests_total(), 1, "not resent");
}

#[tokio::test]
async fn retryable_temporary_failures_are_resent_up_to_max_sends_then_dead() {
    let (app, notify, _bgs) = wired(&[("EBG_CALLBACKS__MAX_SENDS", "3"), ("EBG_WORKER__MAX_ATTEMPTS", "2")]).await;
    let reason = "Retryable - Unable to deliver at this time";
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let mut va_ids = vec![va_id(&app, id).await];

    // Send 1 fails temporarily: resent. The resend meets a 500 first; the retry budget is per send.
    post_signed(&app, &notify, callback_body(Some(va_ids[0]), Some(id), "temporary-failure", Some(reason))).await;
    assert_eq!(app.status_of(id).await, ("queued".to_owned(), Some(reason.to_owned())));
    notify.script([Reply::Status500]);
    app.deliver_all().await;
    assert_eq!(app.status_of(id).await.0, "sent");
    va_ids.push(va_id(&app, id).await);

    // A late callback for the first send changes nothing.
    post_bearer(&app, callback_body(Some(va_ids[0]), Some(id), "delivered", None)).await;
    assert_eq!(app.status_of(id).await.0, "sent");

    // Send 2 fails: resent. Send 3 fails: that was the last allowed send.
    post_bearer(&app, callback_body(Some(va_ids[1]), Some(id), "temporary-failure", Some(reason))).await;
    app.deliver_all().await;
    va_ids.push(va_id(&app, id).await);
    let before = app.metric("ebg_dead_letters_total").await;
    post_bearer(&app, callback_body(Some(va_ids[2]), Some(id), "temporary-failure", Some(reason))).await;
    assert_eq!(app.status_of(id).await, ("dead".to_owned(), Some(reason.to_owned())));
    assert!(app.metric("ebg_dead_letters_total").await > before);
    app.deliver_all().await;

    assert_eq!(notify.accepted_references(), vec![id.to_string(); 3], "three sends, same reference");
    let distinct: std::collections::HashSet<_> = va_ids.iter().collect();
    assert_eq!(distinct.len(), 3, "each send has its own VA Notify id");
    let (sends, attempts): (i32, i32) = sqlx::query_as("select sends, attempts from notifications where id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((sends, attempts), (3, 4), "3 accepted sends, 4 calls (one 500)");
    let effects: Vec<String> = events(&app, id).await.into_iter().map(|e| e.1).collect();
    assert_eq!(effects, ["resend", "recorded", "resend", "dead"]);
}

#[tokio::test]
async fn resends_wait_for_the_configured_delay() {
    let (app, notify, _bgs) = wired(&[("EBG_CALLBACKS__RESEND_DELAY_SECONDS", "3600")]).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    post_bearer(&app, callback_body(Some(va_id(&app, id).await), Some(id), "temporary-failure", Some("Retryable")))
        .await;
    let wait: f64 = sqlx::query_scalar(
        "select extract(epoch from next_attempt_at - now())::float8 from notifications where id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!((3590.0..=3600.5).contains(&wait), "resend in {wait}s");
    assert_eq!(app.deliver_due().await, 0);
    assert_eq!(notify.requests_total(), 1);
    // Proof of delivery of that send cancels the resend.
    post_bearer(&app, callback_body(Some(va_id(&app, id).await), Some(id), "delivered", None)).await;
    assert_eq!(app.status_of(id).await.0, "delivered");
}

#[tokio::test]
async fn a_callback_that_overtakes_the_201_gets_503_and_is_not_recorded() {
    let (app, _notify, _bgs) = wired(&[]).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    // As if a worker held the row and VA Notify's callback came before the 201 was recorded.
    sqlx::query("update notifications set status = 'sending', lease_token = gen_random_uuid() where id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let r = post_bearer(&app, callback_body(Some(Uuid::new_v4()), Some(id), "delivered", None)).await;
    assert_eq!(r.status(), 503);
    assert!(events(&app, id).await.is_empty());
    assert_eq!(app.status_of(id).await.0, "sending");
}
