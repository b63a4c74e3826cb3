//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics` for Datadog's
//! OpenMetrics check. Every label value comes from a fixed set (no ids, no free text).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests to the send_* routes by `api` (which route: send_email, other) and `outcome`. The label is not
/// called `endpoint`: Datadog's OpenMetrics check tags every metric `endpoint:<scrape URL>` already.
pub const REQUESTS: &str = "ebg_requests_total";
/// HTTP request latency by matched `route` and `status` class.
pub const HTTP_DURATION: &str = "ebg_http_request_duration_seconds";
/// Notifications that reached a final state, by `status`, bounded `reason` and `channel` (email, sms, push).
pub const DELIVERIES: &str = "ebg_deliveries_total";
/// Retries scheduled, by bounded `reason`.
pub const RETRIES: &str = "ebg_retries_total";
/// Notifications that ran out of attempts.
pub const DEAD_LETTERS: &str = "ebg_dead_letters_total";
/// Toggle evaluations by `feature` and `result` (enabled, disabled).
pub const TOGGLE_EVALUATIONS: &str = "ebg_toggle_evaluations_total";
/// Delivery-status callbacks by `status`.
pub const CALLBACKS: &str = "ebg_callbacks_total";
/// Authenticated callbacks that matched no notification, by `status`.
pub const CALLBACKS_UNMATCHED: &str = "ebg_callbacks_unmatched_total";
/// Callbacks refused before reading their status, by `reason` (unauthorized, malformed, too_large).
pub const CALLBACKS_REJECTED: &str = "ebg_callbacks_rejected_total";
/// Resends accepted by VA Notify (a later send of a notification after a Retryable temporary failure).
pub const RESENDS: &str = "ebg_resends_total";
/// Notifications whose delivery was attempted: first accepted by VA Notify, or ended `failed`/`dead`
/// before ever being accepted, by `channel`. The denominator of the error rate (README, "Reading the report").
pub const DELIVERY_ATTEMPTED: &str = "ebg_delivery_attempted_total";
/// Requests through click-tracking links, by `kind`: counted (a person), head, scanner, invalid (bad token);
/// and by the notification's `channel` (email, sms) when the click was recorded.
pub const CLICKS: &str = "ebg_clicks_total";
/// Notifications clicked for the first time by a person (unique clicks), by `channel` (email, sms).
pub const CLICKS_UNIQUE: &str = "ebg_clicks_unique_total";
/// Rows deleted by the retention job, by `table`.
pub const RETENTION_DELETED: &str = "ebg_retention_deleted_total";
/// Rows waiting for delivery, by `state` (queued, retry_wait, sending).
pub const QUEUE_DEPTH: &str = "ebg_queue_depth";
/// Age in seconds of the oldest row that is due now.
pub const QUEUE_OLDEST_DUE_AGE: &str = "ebg_queue_oldest_due_age_seconds";
/// Requests committed per accept transaction (group commit).
pub const ACCEPT_BATCH_SIZE: &str = "ebg_accept_batch_size";
/// Accept requests given up before a writer took them, by `reason` (deadline, caller_gone): never recorded.
pub const ACCEPT_ABANDONED: &str = "ebg_accept_abandoned_total";
/// Accept requests answered 503 although their COMMIT was sent (acknowledgement lost): may be recorded.
pub const ACCEPT_COMMIT_UNKNOWN: &str = "ebg_accept_commit_unknown_total";
/// Unacknowledged accepts resolved, by `resolution`: absent (never committed), withdrawn (deleted),
/// kept (already in use: the one case a 503'd request stays recorded).
pub const ACCEPT_IN_DOUBT: &str = "ebg_accept_in_doubt_total";
/// Lookups by reference before a re-send whose earlier call had no known outcome, by `result`:
/// adopted (VA held it; not sent again), absent (sent now), failed (retried later), wait (too early).
pub const RECONCILIATIONS: &str = "ebg_reconciliations_total";
/// Entries in an in-memory cache, by `cache` (contacts, tokens).
pub const CACHE_ENTRIES: &str = "ebg_cache_entries";
/// Accounted bytes of an in-memory cache (an upper bound of its estimated footprint), by `cache`.
pub const CACHE_BYTES: &str = "ebg_cache_bytes";
/// Times the toggle snapshot could not be refreshed.
pub const TOGGLE_REFRESH_FAILURES: &str = "ebg_toggle_refresh_failures_total";
/// Seconds since the toggle snapshot was last refreshed successfully (staleness).
pub const TOGGLE_SNAPSHOT_AGE: &str = "ebg_toggle_snapshot_age_seconds";

/// The feature's current effective percentage by `feature`: 0 when paused or off, 100 when the boolean gate
/// is on, else `percentage_of_actors` (the rollout report's stage percentage), set whenever the snapshot loads.
pub const TOGGLE_PERCENTAGE: &str = "ebg_toggle_percentage";

/// Guarded-rollout decisions by `decision` (start, advance, complete, pause, hold, halt, interrupted,
/// resume, abort) and `mode` (auto, advise).
pub const ROLLOUT_DECISIONS: &str = "ebg_rollout_decisions_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder the first time and returns its handle; later calls reuse it
/// (several app instances in one test process share one registry).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            // Buckets make these histograms (Datadog distributions); without them the exporter renders
            // summaries, which the Datadog check turns into per-replica quantiles that cannot be aggregated.
            let batch_buckets = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &latency_buckets)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ACCEPT_BATCH_SIZE.to_owned()), &batch_buckets))
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (not done anywhere in this crate).
            let _ = metrics::set_global_recorder(recorder);
            describe();
            // Label-less counters exist from the start, so dashboards and "no data" monitors see a 0,
            // not a missing series, before the first event.
            for name in [DEAD_LETTERS, RESENDS, TOGGLE_REFRESH_FAILURES, ACCEPT_COMMIT_UNKNOWN] {
                metrics::counter!(name).increment(0);
            }
            // The same for the rare events of the exactly-once machinery: a monitor on them needs a 0 series.
            let labelled: [(&'static str, &'static str, &[&'static str]); 6] = [
                // The error-rate denominator per channel: the per-channel monitor divides by it.
                (DELIVERY_ATTEMPTED, "channel", &crate::outbox::CHANNELS),
                // The click-through numerator per channel with a tracked link (push has none).
                (CLICKS_UNIQUE, "channel", &crate::clicks::TRACKED_CHANNELS),
                (ACCEPT_ABANDONED, "reason", &["deadline", "caller_gone"]),
                (ACCEPT_IN_DOUBT, "resolution", &["absent", "withdrawn", "kept"]),
                (RECONCILIATIONS, "result", &["adopted", "absent", "failed", "wait"]),
                (crate::notify::LOOKUPS_TOTAL, "outcome", &["found", "none"]),
            ];
            for (name, label, values) in labelled {
                for value in values {
                    metrics::counter!(name, label => *value).increment(0);
                }
            }
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "Requests to the send_* routes by api and outcome.");
    describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request latency by route and status class.");
    describe_counter!(DELIVERIES, "Notifications that reached a final state, by status, reason and channel.");
    describe_counter!(RETRIES, "Delivery retries scheduled, by reason.");
    describe_counter!(DEAD_LETTERS, "Notifications that exhausted their attempts.");
    describe_counter!(TOGGLE_EVALUATIONS, "Feature toggle evaluations by feature and result.");
    describe_counter!(CALLBACKS, "VA Notify delivery-status callbacks by status.");
    describe_counter!(CALLBACKS_UNMATCHED, "Authenticated callbacks that matched no notification, by status.");
    describe_counter!(CALLBACKS_REJECTED, "Callbacks refused (unauthorized, malformed, too_large).");
    describe_counter!(RESENDS, "Resends accepted by VA Notify after a Retryable temporary failure.");
    describe_counter!(
        DELIVERY_ATTEMPTED,
        "Notifications whose delivery was attempted, by channel (error-rate denominator)."
    );
    describe_counter!(CLICKS, "Requests through click-tracking links, by kind and channel.");
    describe_counter!(CLICKS_UNIQUE, "Notifications clicked for the first time by a person, by channel.");
    describe_counter!(ROLLOUT_DECISIONS, "Guarded-rollout decisions by decision and mode.");
    describe_counter!(RETENTION_DELETED, "Rows deleted by the retention job, by table.");
    describe_gauge!(QUEUE_DEPTH, "Notifications waiting for delivery, by state.");
    describe_gauge!(QUEUE_OLDEST_DUE_AGE, metrics::Unit::Seconds, "Age of the oldest due notification.");
    describe_histogram!(ACCEPT_BATCH_SIZE, "Requests committed per accept transaction (group commit).");
    describe_counter!(ACCEPT_ABANDONED, "Accept requests given up before being taken into a transaction, by reason.");
    describe_counter!(
        ACCEPT_COMMIT_UNKNOWN,
        "Accept requests answered 503 whose COMMIT was sent but not acknowledged."
    );
    describe_counter!(ACCEPT_IN_DOUBT, "Unacknowledged accepts resolved, by resolution (absent, withdrawn, kept).");
    describe_counter!(RECONCILIATIONS, "Reconciliations of calls with unknown outcome, by result.");
    describe_gauge!(CACHE_ENTRIES, "Entries in an in-memory cache, by cache.");
    describe_gauge!(CACHE_BYTES, metrics::Unit::Bytes, "Accounted bytes of an in-memory cache, by cache.");
    describe_counter!(TOGGLE_REFRESH_FAILURES, "Failed refreshes of the in-memory toggle snapshot.");
    describe_gauge!(TOGGLE_SNAPSHOT_AGE, metrics::Unit::Seconds, "Time since the toggle snapshot was last refreshed.");
    describe_gauge!(
        TOGGLE_PERCENTAGE,
        "Effective percentage of a feature: 0 paused/off, 100 boolean on, else percentage_of_actors."
    );
    describe_counter!(
        "ebg_contact_lookups_total",
        "Contact (first name) and MPI (ICN) lookups by outcome and source (cache, bgs, sandbox, mpi, mpi_cache, mpi_sandbox)."
    );
    describe_histogram!(
        "ebg_bgs_request_duration_seconds",
        metrics::Unit::Seconds,
        "BGS PersonWebService call latency."
    );
    describe_histogram!("ebg_mpi_request_duration_seconds", metrics::Unit::Seconds, "MPI FHIR Patient read latency.");
    crate::notify::describe_metrics();
}
