//! Liveness and readiness probes.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::db;

/// `GET /health/live`: the process is up and serving.
#[utoipa::path(get, path = "/health/live", tag = "operations", responses((status = 200, description = "Process up")))]
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /health/ready`: the database answers, migrations are applied, and workers run (if enabled).
#[utoipa::path(get, path = "/health/ready", tag = "operations", responses(
    (status = 200, description = "Ready for traffic"),
    (status = 503, description = "Not ready; the body says which check failed"),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = db::is_ready(&state.db).await;
    let workers = !state.config.worker.enabled || state.workers_running.load(Ordering::SeqCst);
    let ok = database && workers;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        Json(json!({ "status": if ok { "ready" } else { "not_ready" }, "database": database, "workers": workers })),
    )
}
