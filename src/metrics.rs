//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics` for Datadog's
//! OpenMetrics check. Every label value comes from a fixed set (no ids, no free text).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests to the send_* routes by `endpoint` and `outcome`.
pub const REQUESTS: &str = "ebg_requests_total";
/// HTTP request latency by matched `route` and `status` class.
pub const HTTP_DURATION: &str = "ebg_http_request_duration_seconds";
/// Notifications that reached a final state, by `status` and bounded `reason`.
pub const DELIVERIES: &str = "ebg_deliveries_total";
/// Retries scheduled, by bounded `reason`.
pub const RETRIES: &str = "ebg_retries_total";
/// Notifications that ran out of attempts.
pub const DEAD_LETTERS: &str = "ebg_dead_letters_total";
/// Toggle evaluations by `feature` and `result` (enabled, disabled).
pub const TOGGLE_EVALUATIONS: &str = "ebg_toggle_evaluations_total";
/// Delivery-status callbacks by `status`.
pub const CALLBACKS: &str = "ebg_callbacks_total";
/// Rows waiting for delivery, by `state` (queued, retry_wait, sending).
pub const QUEUE_DEPTH: &str = "ebg_queue_depth";
/// Age in seconds of the oldest row that is due now.
pub const QUEUE_OLDEST_DUE_AGE: &str = "ebg_queue_oldest_due_age_seconds";
/// Requests committed per accept transaction (group commit).
pub const ACCEPT_BATCH_SIZE: &str = "ebg_accept_batch_size";
/// Times the toggle snapshot could not be refreshed.
pub const TOGGLE_REFRESH_FAILURES: &str = "ebg_toggle_refresh_failures_total";
/// Seconds since the toggle snapshot was last refreshed successfully (staleness).
pub const TOGGLE_SNAPSHOT_AGE: &str = "ebg_toggle_snapshot_age_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder the first time and returns its handle; later calls reuse it
/// (several app instances in one test process share one registry).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &latency_buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (not done anywhere in this crate).
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "Requests to the send_* routes by endpoint and outcome.");
    describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request latency by route and status class.");
    describe_counter!(DELIVERIES, "Notifications that reached a final state, by status and reason.");
    describe_counter!(RETRIES, "Delivery retries scheduled, by reason.");
    describe_counter!(DEAD_LETTERS, "Notifications that exhausted their attempts.");
    describe_counter!(TOGGLE_EVALUATIONS, "Feature toggle evaluations by feature and result.");
    describe_counter!(CALLBACKS, "VA Notify delivery-status callbacks by status.");
    describe_gauge!(QUEUE_DEPTH, "Notifications waiting for delivery, by state.");
    describe_gauge!(QUEUE_OLDEST_DUE_AGE, metrics::Unit::Seconds, "Age of the oldest due notification.");
    describe_histogram!(ACCEPT_BATCH_SIZE, "Requests committed per accept transaction (group commit).");
    describe_counter!(TOGGLE_REFRESH_FAILURES, "Failed refreshes of the in-memory toggle snapshot.");
    describe_gauge!(TOGGLE_SNAPSHOT_AGE, metrics::Unit::Seconds, "Time since the toggle snapshot was last refreshed.");
    describe_counter!("ebg_contact_lookups_total", "Contact lookups by outcome and source (cache, bgs, sandbox).");
    describe_histogram!(
        "ebg_bgs_request_duration_seconds",
        metrics::Unit::Seconds,
        "BGS PersonWebService call latency."
    );
    crate::notify::describe_metrics();
}
