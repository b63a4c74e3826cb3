//! A notification's history (`GET /admin/notifications/{id}`, `ebg-notify show`): what happened to it,
//! as data, without PII.

use ebg_testkit::va_notify::Reply;
use serde_json::Value;
use uuid::Uuid;

use crate::callbacks::{callback_body, post_bearer, va_id, wired};
use crate::clicks::{CLICKS_ON, raw_get, token_in};
use crate::helpers::*;

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0";

async fn history(app: &TestApp, id: &str, token: Option<&str>) -> reqwest::Response {
    let request = app.client.get(format!("{}/admin/notifications/{id}", app.address));
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.unwrap()
}

/// One email that failed once (VA Notify 500), was sent, delivered, and clicked by a person.
async fn delivered_and_clicked(app: &TestApp, notify: &ebg_testkit::FakeVaNotify) -> Uuid {
    notify.script([Reply::Status500, Reply::Created]);
    let id = queue_for(app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let delivered = callback_body(Some(va_id(app, id).await), Some(id), "delivered", None);
    assert_eq!(post_bearer(app, delivered).await.status(), 200);
    assert_eq!(raw_get(app, "GET", &format!("/c/{}/claims", token_in(notify, id)), BROWSER).await.0, 302);
    id
}

fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ebg-notify"))
        .args(args)
        .env("EBG_DATABASE__URL", &app.database_url)
        .env("EBG_TELEMETRY__LOG_FILTER", "error")
        .output()
        .unwrap()
}

#[tokio::test]
async fn history_has_every_attempt_callback_and_click_and_no_pii() {
    let (app, notify, _bgs) = wired(CLICKS_ON).await;
    let id = delivered_and_clicked(&app, &notify).await;
    let va = va_id(&app, id).await;

    let response = history(&app, &id.to_string(), Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for pii in [PARTICIPANT_ID, "JANE", "veteran@example.com"] {
        assert!(!text.contains(pii), "{pii} must not appear: {text}");
    }
    let h: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(h["id"], id.to_string());
    assert_eq!(h["status"], "delivered");
    assert_eq!(h["channel"], "email");
    assert_eq!(h["template_id"], TEMPLATE_ID);
    assert_eq!(h["va_notify_id"], va.to_string());
    assert!(h["created_at"].is_string() && h["sent_at"].is_string() && h["delivered_at"].is_string(), "{h:#}");
    let hash = ebg_notify::telemetry::PiiHasher::new("local-development-only").participant(PARTICIPANT_ID);
    assert_eq!(h["participant_hash"], hash, "the keyed hash the logs carry");
    assert!(h.get("participant_id").is_none(), "no raw id without admin.pii_token_names: {h:#}");

    let attempts = h["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{h:#}");
    assert_eq!((attempts[0]["attempt"].clone(), attempts[0]["outcome"].clone()), (1.into(), "retryable".into()));
    assert_eq!(attempts[0]["http_status"], 500);
    assert_eq!(attempts[1]["outcome"], "sent");
    assert_eq!(attempts[1]["http_status"], 201);
    assert_eq!(attempts[1]["va_notify_id"], va.to_string());
    assert!(attempts.iter().all(|a| a["duration_ms"].as_i64().is_some_and(|ms| ms >= 0)), "{h:#}");

    let callbacks = h["callbacks"].as_array().unwrap();
    assert_eq!(callbacks.len(), 1, "{h:#}");
    assert_eq!(callbacks[0]["status"], "delivered");
    assert_eq!(callbacks[0]["effect"], "moved");
    assert_eq!(callbacks[0]["va_notify_id"], va.to_string());
    assert_eq!((h["clicks"]["by_people"].clone(), h["clicks"]["total"].clone()), (1.into(), 1.into()));

    // The CLI prints the same history as a timeline, and as the same JSON.
    let output = cli(&app, &["show", &id.to_string()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let timeline = String::from_utf8(output.stdout).unwrap();
    let order: Vec<usize> = [
        "requested",
        "attempt 1: retryable (HTTP 500)",
        "attempt 2: sent (HTTP 201)",
        "callback: delivered -> moved",
        "first click by a person",
    ]
    .iter()
    .map(|needle| timeline.find(needle).unwrap_or_else(|| panic!("{needle} in {timeline}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in time order: {timeline}");
    assert!(timeline.contains("status: delivered") && timeline.contains(&format!("hash {hash}")), "{timeline}");
    assert!(!timeline.contains(PARTICIPANT_ID), "{timeline}");
    let output = cli(&app, &["show", &id.to_string(), "--json"]);
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json, h, "the CLI's JSON is the route's");

    let unknown = cli(&app, &["show", &Uuid::new_v4().to_string()]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no notification"));
    assert!(!cli(&app, &["show", "not-a-uuid"]).status.success());
}

#[tokio::test]
async fn unknown_ids_are_404_and_bad_ids_400_with_json_bodies() {
    let app = app().spawn().await;
    let missing = history(&app, &Uuid::new_v4().to_string(), Some(ADMIN_TOKEN)).await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["errors"][0]["detail"], "notification not found");

    let bad = history(&app, "12345", Some(ADMIN_TOKEN)).await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["errors"][0]["source"]["parameter"], "id");

    let doc: Value =
        app.client.get(format!("{}/openapi.json", app.address)).send().await.unwrap().json().await.unwrap();
    let operation = &doc["paths"]["/admin/notifications/{id}"]["get"];
    assert_eq!(operation["operationId"], "notification_history", "{operation:#}");
    assert!(doc["components"]["schemas"]["NotificationHistory"]["properties"]["attempts"].is_object());
}

#[tokio::test]
async fn reads_need_an_admin_token_when_reads_are_protected() {
    let app = app().env("EBG_ADMIN__PROTECT_READS", "true").spawn().await;
    let id = queue_for_suppressed(&app).await;
    assert_eq!(history(&app, &id, None).await.status(), 401);
    assert_eq!(history(&app, &id, Some("wrong-token")).await.status(), 401);
    assert_eq!(history(&app, &id, Some(&token_for(PARTICIPANT_ID))).await.status(), 401, "EBG's token is no admin");
    let ok: Value = history(&app, &id, Some(ADMIN_TOKEN)).await.json().await.unwrap();
    assert_eq!(ok["status"], "suppressed");
}

#[tokio::test]
async fn only_tokens_named_in_pii_token_names_see_the_participant_id() {
    let app = app().env("EBG_ADMIN__PII_TOKEN_NAMES", r#"["ops"]"#).spawn().await;
    let id = queue_for_suppressed(&app).await;
    let ops: Value = history(&app, &id, Some(ADMIN_TOKEN)).await.json().await.unwrap();
    assert_eq!(ops["participant_id"], PARTICIPANT_ID);
    // Reads are open on the local profile, but an anonymous reader is no token named there.
    let anonymous: Value = history(&app, &id, None).await.json().await.unwrap();
    assert!(anonymous.get("participant_id").is_none(), "{anonymous:#}");
    assert!(anonymous["participant_hash"].is_string());

    let unknown_name = ebg_notify::config::Config::load_from(vec![(
        "EBG_ADMIN__PII_TOKEN_NAMES".to_owned(),
        r#"["nobody"]"#.to_owned(),
    )]);
    assert!(unknown_name.unwrap_err().to_string().contains("admin.pii_token_names: `nobody`"));
}

/// Records one request while the toggle is off (a `suppressed` row); returns its id.
async fn queue_for_suppressed(app: &TestApp) -> String {
    let response = app
        .post_send_email()
        .bearer_auth(token_for(PARTICIPANT_ID))
        .header("Accept", "application/json")
        .json(&serde_json::json!({ "template_id": TEMPLATE_ID }))
        .send()
        .await
        .unwrap();
    let (id, status) = accepted(response).await;
    assert_eq!(status, "suppressed");
    id.to_string()
}
