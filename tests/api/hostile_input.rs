//! Hostile input never reaches PostgreSQL as an error: each class gets the right 4xx, a JSON body whose
//! `source` names the field where there is one, nothing is recorded, and the service keeps serving.

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::helpers::{ADMIN_TOKEN, CALLBACK_TOKEN, TEMPLATE_ID, TestApp, app, queue_for, token_for, wired_app};

const FEATURE: &str = "event_bus_gateway_emails_enabled";

/// Asserts `response` is `status` with a JSON error whose first `source` is `source`; returns the body.
async fn assert_refused(response: reqwest::Response, status: u16, source: Value) -> Value {
    assert_eq!(response.status(), status, "{:?}", response.url().path());
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["errors"][0]["source"], source, "{body}");
    body
}

/// The service still answers, and still writes to its database.
async fn still_serving(app: &TestApp) {
    let live = app.client.get(format!("{}/health/live", app.address)).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = app.client.get(format!("{}/health/ready", app.address)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

async fn audit_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from feature_audit").fetch_one(&app.db).await.unwrap()
}

fn flipper(app: &TestApp, path: &str) -> String {
    format!("{}/flipper/api/features{path}", app.address)
}

#[tokio::test]
async fn nul_in_any_text_input_is_a_400_naming_the_field() {
    let (app, _notify, _bgs) = wired_app(&[]).await;
    let before = audit_rows(&app).await;
    let admin = |url: String| app.client.post(url).bearer_auth(ADMIN_TOKEN);

    // Feature name in the path.
    let r = admin(flipper(&app, "/a%00b/boolean")).send().await.unwrap();
    assert_refused(r, 400, json!({"parameter": "name"})).await;
    let r = app.client.get(flipper(&app, "/a%00b")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_refused(r, 400, json!({"parameter": "name"})).await;
    // Actor, as JSON and as a form.
    let r = admin(flipper(&app, &format!("/{FEATURE}/actors")))
        .json(&json!({"flipper_id": "1\u{0}"}))
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"parameter": "flipper_id"})).await;
    let r = admin(flipper(&app, &format!("/{FEATURE}/actors")))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("flipper_id=1%00")
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"parameter": "flipper_id"})).await;
    // Reason in the body and in the query string; a nested value is named by its JSON pointer.
    let pause = format!("{}/admin/features/{FEATURE}/pause", app.address);
    let r = admin(pause.clone()).json(&json!({"reason": "incident\u{0}"})).send().await.unwrap();
    assert_refused(r, 400, json!({"parameter": "reason"})).await;
    let r = admin(format!("{pause}?reason=x%00")).send().await.unwrap();
    assert_refused(r, 400, json!({"parameter": "reason"})).await;
    let r = admin(format!("{}/admin/rollouts", app.address))
        .json(&json!({"stages": [{"percentage": 2, "note": "\u{0}"}]}))
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"pointer": "/stages/0/note"})).await;
    // A rollout id in the path.
    let r = admin(format!("{}/admin/rollouts/%00/pause", app.address)).send().await.unwrap();
    assert_refused(r, 400, json!({"parameter": "id"})).await;
    // The audit route's path and the report's query.
    let r = app
        .client
        .get(format!("{}/admin/features/x%00/audit", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"parameter": "name"})).await;
    let r = app
        .client
        .get(format!("{}/admin/rollout/report?feature=%00", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"parameter": "feature"})).await;
    // send_email's template_id.
    let r = app
        .post_send_email()
        .bearer_auth(token_for(crate::helpers::PARTICIPANT_ID))
        .json(&json!({"template_id": "\u{0}"}))
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"parameter": "template_id"})).await;

    // A callback's status_reason: refused (VA Notify does not retry a 4xx), not a 500 it retries forever.
    let id = queue_for(&app, crate::helpers::PARTICIPANT_ID).await;
    let r = callback(&app, &json!({"reference": id, "status": "delivered", "status_reason": "a\u{0}"})).await;
    assert_refused(r, 400, json!({"parameter": "status_reason"})).await;
    let events: i64 = sqlx::query_scalar("select count(*) from notification_events").fetch_one(&app.db).await.unwrap();
    assert_eq!(events, 0);

    assert_eq!(audit_rows(&app).await, before, "nothing was recorded");
    still_serving(&app).await;
}

async fn callback(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}/va_notify/callbacks", app.address))
        .bearer_auth(CALLBACK_TOKEN)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn header_text_is_utf8_checked_not_silently_dropped() {
    let app = app().spawn().await;
    // An X-Reason in UTF-8 is a reason; one that is not UTF-8 is refused, not taken as "no reason".
    let pause = format!("{}/admin/features/{FEATURE}/pause", app.address);
    add_feature(&app).await;
    let utf8 = reqwest::header::HeaderValue::from_bytes("Störung".as_bytes()).unwrap();
    let r = app.client.post(&pause).bearer_auth(ADMIN_TOKEN).header("X-Reason", utf8).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let reason: String = sqlx::query_scalar("select reason from feature_audit order by id desc limit 1")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(reason, "Störung");
    let latin1 = reqwest::header::HeaderValue::from_bytes(b"St\xf6rung").unwrap();
    let r = app.client.post(&pause).bearer_auth(ADMIN_TOKEN).header("X-Reason", latin1).send().await.unwrap();
    assert_refused(r, 400, json!({"header": "X-Reason"})).await;
    // A reason is a sentence, not a log file: over 1,000 characters is refused, header or body.
    let before = audit_rows(&app).await;
    let long = "x".repeat(1001);
    let r = app.client.post(&pause).bearer_auth(ADMIN_TOKEN).header("X-Reason", long.as_str()).send().await.unwrap();
    assert_refused(r, 400, json!({"header": "X-Reason"})).await;
    let r = app.client.post(&pause).bearer_auth(ADMIN_TOKEN).form(&[("reason", long.as_str())]).send().await.unwrap();
    assert_refused(r, 400, json!({"parameter": "reason"})).await;
    assert_eq!(audit_rows(&app).await, before, "nothing audited");
    // Idempotency-Key must be visible ASCII.
    let key = reqwest::header::HeaderValue::from_bytes(b"k\xff").unwrap();
    let r = app
        .post_send_email()
        .bearer_auth(token_for(crate::helpers::PARTICIPANT_ID))
        .header("Idempotency-Key", key)
        .json(&json!({"template_id": TEMPLATE_ID}))
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"parameter": "Idempotency-Key"})).await;
    still_serving(&app).await;
}

async fn add_feature(app: &TestApp) {
    let r = app
        .client
        .post(flipper(app, ""))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": FEATURE}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn invalid_utf8_in_bodies_and_query_strings_is_a_400() {
    let app = app().spawn().await;
    let actors = flipper(&app, &format!("/{FEATURE}/actors"));
    let form = app
        .client
        .post(&actors)
        .bearer_auth(ADMIN_TOKEN)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(&b"flipper_id=%FF%FE"[..])
        .send()
        .await
        .unwrap();
    assert_refused(form, 400, json!({"parameter": "flipper_id"})).await;
    let json = app
        .client
        .post(&actors)
        .bearer_auth(ADMIN_TOKEN)
        .header(CONTENT_TYPE, "application/json")
        .body(&b"{\"flipper_id\":\"\xff\"}"[..])
        .send()
        .await
        .unwrap();
    assert_refused(json, 400, json!({"pointer": "/"})).await;
    let query = app
        .client
        .get(format!("{}/flipper/api/features?keys=%C3%28", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_refused(query, 400, json!({"parameter": "keys"})).await;
    let audit = app
        .client
        .get(format!("{}/admin/features/{FEATURE}/audit?limit=%FF", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_refused(audit, 400, json!({"parameter": "limit"})).await;
    // A path segment that decodes to bad UTF-8.
    let path = app.client.get(flipper(&app, "/%FF")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_refused(path, 400, json!({"pointer": "/path"})).await;
    assert_eq!(audit_rows(&app).await, 0);
    still_serving(&app).await;
}

#[tokio::test]
async fn deep_nesting_duplicate_keys_and_numbers_out_of_range_are_4xx() {
    let app = app().spawn().await;
    let admin = |url: String| app.client.post(url).bearer_auth(ADMIN_TOKEN);
    let pct = flipper(&app, &format!("/{FEATURE}/percentage_of_actors"));

    // 10,000-deep JSON, in an admin body and in a callback.
    let deep = format!("{{\"percentage\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let r = admin(pct.clone()).header(CONTENT_TYPE, "application/json").body(deep.clone()).send().await.unwrap();
    let body = assert_refused(r, 400, json!({"pointer": "/"})).await;
    assert!(body["errors"][0]["detail"].as_str().unwrap().contains("nested too deeply"), "{body}");
    let r = app
        .client
        .post(format!("{}/va_notify/callbacks", app.address))
        .bearer_auth(CALLBACK_TOKEN)
        .header(CONTENT_TYPE, "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"pointer": "/"})).await;

    // Duplicate keys: the two readers of a body could disagree about which one counts.
    let r = admin(pct.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"percentage":"5","percentage":"100"}"#)
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"parameter": "percentage"})).await;
    let r = app
        .client
        .post(format!("{}/va_notify/callbacks", app.address))
        .bearer_auth(CALLBACK_TOKEN)
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"status":"delivered","status":"permanent-failure"}"#)
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"parameter": "status"})).await;

    // Numbers out of range: Flipper's percentage check (error 3) for text, 400 for a JSON number
    // that does not fit a double, and a 400 naming `limit` for an i64 overflow.
    let r = admin(pct.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("percentage=1e309")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 3);
    let r = admin(pct).header(CONTENT_TYPE, "application/json").body(r#"{"percentage":1e309}"#).send().await.unwrap();
    assert_refused(r, 400, json!({"pointer": "/"})).await;
    for route in [format!("/admin/features/{FEATURE}/audit"), "/admin/rollouts".to_owned()] {
        let r = app
            .client
            .get(format!("{}{route}?limit=9223372036854775808", app.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_refused(r, 400, json!({"parameter": "limit"})).await;
    }
    let r = app
        .client
        .get(format!("{}/admin/features/{FEATURE}/audit?before_id=-9223372036854775809", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, json!({"parameter": "before_id"})).await;
    assert_eq!(audit_rows(&app).await, 0);
    still_serving(&app).await;
}

#[tokio::test]
async fn huge_headers_and_long_path_segments_are_4xx() {
    let app = app().spawn().await;
    // A 1 MiB header: the HTTP server refuses the request head (431) before any handler runs. Sent on
    // a raw socket, since a client may see the connection close before it has finished writing.
    let mut stream = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
    let head = format!("GET /health/live HTTP/1.1\r\nHost: x\r\nX-Reason: {}\r\n\r\n", "a".repeat(1 << 20));
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = vec![0; 64];
    let n = stream.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer[..n]));

    // A 5,000-character feature name: not found to read, Flipper's error 5 to write.
    let long = "f".repeat(5_000);
    let r = app.client.get(flipper(&app, &format!("/{long}"))).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 1);
    let r = app.client.post(flipper(&app, &format!("/{long}/boolean"))).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 5);
    let r = app
        .client
        .get(format!("{}/admin/features/{long}/audit", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r =
        app.client.get(format!("{}/admin/rollouts/{long}", app.address)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.client.get(format!("{}/c/{long}/{long}", app.address)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    still_serving(&app).await;
}

#[tokio::test]
async fn a_callback_reference_that_is_not_a_uuid_is_a_400() {
    let (app, _notify, _bgs) = wired_app(&[]).await;
    for reference in [json!("not-a-uuid"), json!(""), json!(42)] {
        let r = callback(&app, &json!({"reference": reference, "status": "delivered"})).await;
        assert_refused(r, 400, json!({"parameter": "reference"})).await;
    }
    // A reference of null (or none) is matched by VA Notify's id as before: unknown, 200.
    let r = callback(&app, &json!({"reference": null, "id": Uuid::new_v4(), "status": "delivered"})).await;
    assert_eq!(r.status(), 200);
    let r = callback(&app, &json!({"status": 7})).await;
    assert_refused(r, 400, json!({"parameter": "status"})).await;
    still_serving(&app).await;
}

#[tokio::test]
async fn flipper_routes_not_served_answer_a_flipper_error() {
    let app = app().spawn().await;
    for (method, path) in [
        (reqwest::Method::POST, format!("/{FEATURE}/groups")),
        (reqwest::Method::DELETE, format!("/{FEATURE}/groups")),
        (reqwest::Method::POST, format!("/{FEATURE}/expression")),
        (reqwest::Method::DELETE, format!("/{FEATURE}/expression")),
    ] {
        let r = app.client.request(method, flipper(&app, &path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], 100, "{body}");
        assert!(body["message"].as_str().unwrap().contains("not supported"), "{body}");
        assert!(body["more_info"].as_str().unwrap().starts_with("https://"), "{body}");
    }
    let r =
        app.client.post(format!("{}/flipper/api/import", app.address)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 100);
}
