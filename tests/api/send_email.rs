//! `POST /v0/event_bus_gateway/send_email`: vets-api's contract, auth, validation, idempotency.

use serde_json::{Value, json};

use crate::helpers::*;

async fn json_status(app: &TestApp, req: reqwest::RequestBuilder) -> (u16, Value) {
    let _ = app;
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn accepts_template_id_from_json_form_and_query_with_an_empty_200() {
    let app = app().spawn().await;
    app.enable_emails().await;
    let token = token_for(PARTICIPANT_ID);
    let templates = [
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
        "33333333-3333-4333-8333-333333333333",
    ];
    let json = app.post_send_email().bearer_auth(&token).json(&json!({ "template_id": templates[0], "extra": 1 }));
    let form = app.post_send_email().bearer_auth(&token).form(&[("template_id", templates[1])]);
    let query = app.post_send_email().bearer_auth(&token).query(&[("template_id", templates[2])]);
    for req in [json, form, query] {
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.text().await.unwrap().is_empty(), "vets-api parity: empty body");
    }
    assert_eq!(app.count("queued").await, 3);
    let row: (String, String) = sqlx::query_as(
        "select participant_id, template_id::text from notifications where template_id = $1::uuid::text",
    )
    .bind(templates[1])
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(row, (PARTICIPANT_ID.to_owned(), templates[1].to_owned()));
}

#[tokio::test]
async fn accept_json_returns_the_id_and_state() {
    let app = app().spawn().await;
    app.enable_emails().await;
    let response = app
        .post_send_email()
        .bearer_auth(token_for(PARTICIPANT_ID))
        .header("Accept", "application/json")
        .json(&json!({ "template_id": TEMPLATE_ID }))
        .send()
        .await
        .unwrap();
    let (id, status) = accepted(response).await;
    assert_eq!(status, "queued");
    assert_eq!(app.status_of(id).await.0, "queued");
}

#[tokio::test]
async fn toggle_off_still_answers_200_but_records_suppressed() {
    let app = app().spawn().await;
    let series = r#"ebg_requests_total{api="send_email",outcome="suppressed",channel="email"}"#;
    let before = app.metric(series).await;
    let response = app.send_email(TEMPLATE_ID).await;
    assert_eq!(response.status(), 200);
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("select status, status_reason from notifications").fetch_one(&app.db).await.unwrap();
    assert_eq!((status.as_str(), reason.as_deref()), ("suppressed", Some("toggle_disabled")));
    assert_eq!(app.deliver_due().await, 0, "suppressed rows are not delivered");
    assert_eq!(app.metric(series).await, before + 1.0);
}

#[tokio::test]
async fn each_auth_failure_gets_vets_api_status_and_body() {
    let app = app().spawn().await;
    let body = json!({ "template_id": TEMPLATE_ID });
    let now = chrono::Utc::now().timestamp();
    let mut expired = claims(PARTICIPANT_ID);
    expired["exp"] = json!(now - 120);
    expired["iat"] = json!(now - 3600);
    expired["nbf"] = json!(now - 3600);
    let mut wrong_scope = claims(PARTICIPANT_ID);
    // vets-api accepted any scope that was a substring of the URL; exact match is required here.
    wrong_scope["scopes"] = json!(["http://localhost:3000/v0/event_bus_gateway"]);
    let mut wrong_aud = claims(PARTICIPANT_ID);
    wrong_aud["aud"] = json!("https://evil.example");
    let forged = ebg_notify::auth::mint_token_with_claims(OTHER_PRIVATE_KEY, &claims(PARTICIPANT_ID)).unwrap();
    let hs256 = {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let key = jsonwebtoken::EncodingKey::from_secret(include_bytes!("../../config/dev/dev_public_key.pem"));
        jsonwebtoken::encode(&header, &claims(PARTICIPANT_ID), &key).unwrap()
    };
    let alg_none = {
        use base64::Engine;
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(PARTICIPANT_ID)))
    };
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("missing", None, 401, "Service Account access token JWT is malformed"),
        ("garbage", Some("not-a-jwt".into()), 401, "Service Account access token JWT is malformed"),
        ("alg none", Some(alg_none), 401, "Service Account access token JWT is malformed"),
        ("expired", Some(sign(&expired)), 403, "Service Account access token has expired"),
        ("forged", Some(forged), 401, "Service Account access token body does not match signature"),
        ("scope", Some(sign(&wrong_scope)), 401, "Required scope for requested resource not found"),
    ];
    for (name, token, status, message) in cases {
        let mut req = app.post_send_email().json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let (got, body) = json_status(&app, req).await;
        assert_eq!(got, status, "{name}");
        assert_eq!(body, json!({ "errors": message }), "{name}");
    }
    for (name, token) in [("hs256 key confusion", hs256), ("audience", sign(&wrong_aud))] {
        let (got, _) = json_status(&app, app.post_send_email().bearer_auth(token).json(&body)).await;
        assert_eq!(got, 401, "{name}");
    }
    // The admin token is not a service-account token.
    let (got, _) = json_status(&app, app.post_send_email().bearer_auth(ADMIN_TOKEN).json(&body)).await;
    assert_eq!(got, 401);
    let count: i64 = sqlx::query_scalar("select count(*) from notifications").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0, "nothing recorded for refused requests");
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_naming_the_field() {
    let app = app().spawn().await;
    let token = token_for(PARTICIPANT_ID);
    let big = "x".repeat(70 * 1024);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("missing", app.post_send_email().bearer_auth(&token).json(&json!({})), 400, "template_id"),
        ("blank", app.post_send_email().bearer_auth(&token).json(&json!({"template_id": "  "})), 400, "template_id"),
        (
            "not uuid",
            app.post_send_email().bearer_auth(&token).json(&json!({"template_id": "abc"})),
            400,
            "template_id",
        ),
        (
            "sql",
            app.post_send_email().bearer_auth(&token).json(&json!({"template_id": "'; drop table notifications; --"})),
            400,
            "template_id",
        ),
        ("number", app.post_send_email().bearer_auth(&token).json(&json!({"template_id": 42})), 400, "template_id"),
        (
            "malformed json",
            app.post_send_email()
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{\"template_id\":"),
            400,
            "/",
        ),
        (
            "json array",
            app.post_send_email().bearer_auth(&token).header("content-type", "application/json").body("[1]"),
            400,
            "/",
        ),
        (
            "invalid utf-8",
            app.post_send_email()
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(vec![b'{', 0xff, 0xfe, b'}']),
            400,
            "/",
        ),
        (
            "too large",
            app.post_send_email()
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(format!("{{\"template_id\":\"{big}\"}}")),
            413,
            "/",
        ),
        (
            "xml",
            app.post_send_email().bearer_auth(&token).header("content-type", "application/xml").body("<a/>"),
            415,
            "Content-Type",
        ),
        (
            "idempotency key too long",
            app.post_send_email()
                .bearer_auth(&token)
                .header("Idempotency-Key", "k".repeat(256))
                .json(&json!({"template_id": TEMPLATE_ID})),
            400,
            "Idempotency-Key",
        ),
    ];
    for (name, req, status, field) in cases {
        let (got, body) = json_status(&app, req).await;
        assert_eq!(got, status, "{name}: {body}");
        let source = &body["errors"][0]["source"];
        let named = source["parameter"] == field || source["header"] == field || source["pointer"] == field;
        assert!(named, "{name}: error must name {field}: {body}");
    }
    let count: i64 = sqlx::query_scalar("select count(*) from notifications").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_token_without_a_usable_participant_id_is_422() {
    let app = app().spawn().await;
    let mut no_pid = claims(PARTICIPANT_ID);
    no_pid["user_attributes"] = json!({});
    let mut sql_pid = claims(PARTICIPANT_ID);
    sql_pid["user_attributes"]["participant_id"] = json!("1 or 1=1");
    for c in [no_pid, sql_pid] {
        let req = app.post_send_email().bearer_auth(sign(&c)).json(&json!({ "template_id": TEMPLATE_ID }));
        let (got, body) = json_status(&app, req).await;
        assert_eq!(got, 422);
        assert_eq!(body["errors"][0]["source"]["parameter"], "participant_id");
    }
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_record_one_notification() {
    let app = app().spawn().await;
    app.enable_emails().await;
    let token = token_for(PARTICIPANT_ID);
    let requests = (0..20).map(|_| {
        app.post_send_email()
            .bearer_auth(&token)
            .header("Idempotency-Key", "ebg-event-42")
            .header("Accept", "application/json")
            .json(&json!({ "template_id": TEMPLATE_ID }))
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for r in responses {
        let (id, _) = accepted(r.unwrap()).await;
        ids.insert(id);
    }
    assert_eq!(ids.len(), 1, "every repeat returns the first result");
    let count: i64 = sqlx::query_scalar("select count(*) from notifications").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 1);
    // The same key for another template is a client error, not a silent replay.
    let other = app
        .post_send_email()
        .bearer_auth(&token)
        .header("Idempotency-Key", "ebg-event-42")
        .json(&json!({ "template_id": "99999999-9999-4999-8999-999999999999" }));
    let (got, body) = json_status(&app, other).await;
    assert_eq!(got, 422);
    assert_eq!(body["errors"][0]["source"]["parameter"], "Idempotency-Key");
}

#[tokio::test]
async fn repeats_without_a_key_inside_the_window_are_recorded_as_duplicates() {
    let app = app().spawn().await;
    app.enable_emails().await;
    let token = token_for(PARTICIPANT_ID);
    let requests = (0..10).map(|_| {
        app.post_send_email()
            .bearer_auth(&token)
            .header("Accept", "application/json")
            .json(&json!({ "template_id": TEMPLATE_ID }))
            .send()
    });
    let mut statuses: Vec<String> = Vec::new();
    for r in futures::future::join_all(requests).await {
        statuses.push(accepted(r.unwrap()).await.1);
    }
    assert_eq!(statuses.iter().filter(|s| *s == "queued").count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| *s == "duplicate").count(), 9);
    // Another template or another participant is not a duplicate.
    let (_, s) = accepted(
        app.post_send_email()
            .bearer_auth(token_for("600000001"))
            .header("Accept", "application/json")
            .json(&json!({ "template_id": TEMPLATE_ID }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, "queued");
    let dup_of: i64 = sqlx::query_scalar(
        "select count(*) from notifications d join notifications o on o.id = d.duplicate_of
         where d.status = 'duplicate' and d.status_reason = 'duplicate_within_window' and o.status = 'queued'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(dup_of, 9);
}

#[tokio::test]
async fn the_duplicate_window_is_configurable() {
    let app = app().env("EBG_ACCEPT__DUPLICATE_WINDOW_SECONDS", 0).spawn().await;
    app.enable_emails().await;
    for _ in 0..2 {
        assert_eq!(app.send_email(TEMPLATE_ID).await.status(), 200);
    }
    assert_eq!(app.count("queued").await, 2);
}

#[tokio::test]
async fn database_outage_answers_503_never_a_false_200() {
    let app = app().env("EBG_DATABASE__ACQUIRE_TIMEOUT_MS", 300).spawn().await;
    app.enable_emails().await;
    // Terminate every connection and refuse new ones to this database, as an outage would.
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", server_url())).await.unwrap();
    let name = app.database_url.rsplit('/').next().unwrap().to_owned();
    sqlx::query(&format!("alter database \"{name}\" allow_connections false")).execute(&admin).await.unwrap();
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    let response = app.send_email(TEMPLATE_ID).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    // Back up: the pool reconnects by itself.
    sqlx::query(&format!("alter database \"{name}\" allow_connections true")).execute(&admin).await.unwrap();
    let recovered = app
        .eventually(std::time::Duration::from_secs(10), || async { app.send_email(TEMPLATE_ID).await.status() == 200 })
        .await;
    assert!(recovered);
}

#[tokio::test]
async fn group_commit_keeps_idempotency_and_duplicates_exact_under_concurrency() {
    let app = app().spawn().await;
    app.enable_emails().await;
    let batches_before = app.metric("ebg_accept_batch_size_count").await;
    let same_key = "11111111-aaaa-4aaa-8aaa-111111111111";
    let repeated = "22222222-bbbb-4bbb-8bbb-222222222222";
    let mut requests = Vec::new();
    for i in 0..150u32 {
        let (pid, template, key) = match i % 3 {
            0 => (PARTICIPANT_ID.to_owned(), same_key, Some("one-event")),
            1 => (PARTICIPANT_ID.to_owned(), repeated, None),
            _ => ((600_300_000 + i).to_string(), TEMPLATE_ID, None),
        };
        let mut req = app
            .post_send_email()
            .bearer_auth(token_for(&pid))
            .header("Accept", "application/json")
            .json(&json!({ "template_id": template }));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        requests.push(req.send());
    }
    for r in futures::future::join_all(requests).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let counts: Vec<(String, String, i64)> =
        sqlx::query_as("select template_id::text, status, count(*) from notifications group by 1, 2 order by 1, 2")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        counts,
        vec![
            (same_key.to_owned(), "queued".to_owned(), 1),
            (repeated.to_owned(), "duplicate".to_owned(), 49),
            (repeated.to_owned(), "queued".to_owned(), 1),
            (TEMPLATE_ID.to_owned(), "queued".to_owned(), 50),
        ]
    );
    let batches = app.metric("ebg_accept_batch_size_count").await - batches_before;
    assert!(batches < 150.0, "150 concurrent requests should share commits, got {batches} transactions");
}
