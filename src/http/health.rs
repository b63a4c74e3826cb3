//! Liveness and readiness probes.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::db;
use crate::state::AppState;

/// `{"status": "ok"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Liveness {
    pub status: &'static str,
}

/// Readiness and the checks behind it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub database: bool,
    pub workers: bool,
}

/// `GET /health/live`: the process is up and serving.
#[utoipa::path(get, path = "/health/live", tag = "operations", operation_id = "health_live",
    responses((status = 200, description = "Process up", body = Liveness)))]
pub async fn live() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// `GET /health/ready`: the database answers, migrations are applied, and workers run (if enabled).
#[utoipa::path(get, path = "/health/ready", tag = "operations", operation_id = "health_ready", responses(
    (status = 200, description = "Ready for traffic", body = Readiness),
    (status = 503, description = "Not ready; the body says which check failed", body = Readiness),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database = db::is_ready(&state.db).await;
    let workers = !state.config.worker.enabled || state.workers_running.load(Ordering::SeqCst);
    let ok = database && workers;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { status: if ok { "ready" } else { "not_ready" }, database, workers }))
}
