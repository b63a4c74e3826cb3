//! Health, OpenAPI, metrics, and the sandbox end to end.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn health_probes() {
    let app = app().with_workers().spawn().await;
    let live = app.client.get(format!("{}/health/live", app.address)).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = app.eventually(Duration::from_secs(5), || async {
        app.client.get(format!("{}/health/ready", app.address)).send().await.unwrap().status() == 200
    });
    assert!(ready.await);
}

#[tokio::test]
async fn openapi_document_lists_every_public_route() {
    let app = app().spawn().await;
    let doc: Value =
        app.client.get(format!("{}/openapi.json", app.address)).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        SEND_EMAIL,
        "/va_notify/callbacks",
        "/c/{token}/{path}",
        "/admin/rollout/report",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
        "/flipper/api/features",
        "/flipper/api/features/{name}",
        "/flipper/api/features/{name}/clear",
        "/flipper/api/features/{name}/boolean",
        "/flipper/api/features/{name}/percentage_of_actors",
        "/flipper/api/features/{name}/percentage_of_time",
        "/flipper/api/features/{name}/actors",
        "/flipper/api/actors/{flipper_id}",
        "/admin/features/{name}/pause",
        "/admin/features/{name}/resume",
        "/admin/features/{name}/audit",
        "/admin/notifications/release",
    ] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    let send = &doc["paths"][SEND_EMAIL]["post"];
    for status in ["200", "400", "401", "403", "413", "415", "422", "503"] {
        assert!(send["responses"][status].is_object(), "send_email lacks {status}");
    }
    assert!(doc["components"]["securitySchemes"]["service_account"].is_object());
    for (path, method) in [
        ("/flipper/api/features/{name}/boolean", "post"),
        ("/flipper/api/features/{name}/boolean", "delete"),
        ("/flipper/api/features/{name}/actors", "delete"),
        ("/flipper/api/features", "post"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "missing {method} {path}");
    }
}

#[tokio::test]
async fn sandbox_mode_reaches_delivered_end_to_end() {
    let app = app().with_workers().spawn().await;
    app.enable_emails().await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    let delivered =
        app.eventually(Duration::from_secs(10), || async { app.status_of(id).await.0 == "delivered" }).await;
    assert!(delivered, "status is {:?}", app.status_of(id).await);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"ebg_deliveries_total{status="sent",reason="va_notify_accepted",channel="email"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"ebg_callbacks_total{status="delivered"}"#));
}

#[tokio::test]
async fn callbacks_require_the_token() {
    let app = app().spawn().await;
    let url = format!("{}/va_notify/callbacks", app.address);
    let body = json!({ "id": uuid::Uuid::new_v4(), "reference": null, "status": "delivered" });
    let r = app.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "message": "Unauthorized" }));
    let r = app.client.post(&url).bearer_auth("wrong").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app.client.post(&url).bearer_auth(CALLBACK_TOKEN).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "unknown notifications are still 200");
    let r = app
        .client
        .post(&url)
        .bearer_auth(CALLBACK_TOKEN)
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
