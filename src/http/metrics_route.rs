//! `GET /metrics`: Prometheus text for Datadog's OpenMetrics check.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::metrics as m;
use crate::outbox;
use crate::state::AppState;

/// Renders every metric; queue gauges are refreshed first from the small pending-row index.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    match outbox::queue_depth(&state.db).await {
        Ok((depth, oldest)) => {
            for name in crate::outbox::lifecycle::names(&crate::outbox::lifecycle::PENDING) {
                let count = depth.iter().find(|(s, _)| s == name).map(|(_, c)| *c).unwrap_or(0);
                metrics::gauge!(m::QUEUE_DEPTH, "state" => name).set(count as f64);
            }
            metrics::gauge!(m::QUEUE_OLDEST_DUE_AGE).set(oldest);
        }
        // Serve the counters anyway; stale gauges are better than no scrape at all.
        Err(e) => tracing::warn!(error = %e, "queue depth query failed"),
    }
    state.deliverer.record_breaker_states();
    state.verifier.record_cache_size();
    state.deliverer.record_cache_size().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
