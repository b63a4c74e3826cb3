//! Admin routes beyond Flipper (SPEC §4.4): the kill switch, the audit log, and releasing mail that
//! was suppressed while the toggle was off.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::extract::{AdminAudit, AdminReadAuth, Params, PathText, StrictQuery};
use super::flipper_api::{FeatureBody, feature_json};
use super::openapi::{AdminUnauthorized, InputRejections, ReadRejections};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::state::AppState;
use crate::toggles::EMAILS_ENABLED;
use crate::toggles::release::{self, ReleaseOutcome, ReleaseRequest};
use crate::toggles::store::{self, AuditContext, AuditEntry, Change};

/// Audit page size when `limit` is not given, and the most one page returns.
const DEFAULT_AUDIT_LIMIT: i64 = 50;
const MAX_AUDIT_LIMIT: i64 = 500;

/// The admin routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/features/{name}/pause", post(pause))
        .route("/admin/features/{name}/resume", post(resume))
        .route("/admin/features/{name}/audit", get(audit))
        .route("/admin/notifications/release", post(release_suppressed))
}

/// Pause/resume body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReasonParam {
    /// Why; required for pause (or send it as `X-Reason`).
    pub reason: Option<String>,
}

/// One page of the audit log, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before_id` for the next (older) page; null on the last page.
    pub next_before_id: Option<i64>,
}

/// Audit query.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Only entries older than this id.
    pub before_id: Option<i64>,
}

/// Release body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReleaseParams {
    /// RFC 3339; rows created at or after this time.
    pub from: String,
    /// RFC 3339; rows created before this time. Default: everything recorded so far.
    pub to: Option<String>,
    /// Count only.
    pub dry_run: Option<bool>,
    /// The gate whose suppressed notifications to release: `event_bus_gateway_emails_enabled` (the
    /// default), `event_bus_gateway_letter_ready_sms_notifications` or
    /// `event_bus_gateway_letter_ready_push_notifications`. Its channel is the one released; the SMS and
    /// push gates are keyed by ICN, which MPI gives for each participant.
    pub feature: Option<String>,
}

/// Kill switch on: the feature is off for everyone, its gates stay as they are.
#[utoipa::path(post, path = "/admin/features/{name}/pause", tag = "admin", operation_id = "pause_feature",
    params(
        ("name" = String, Path, description = "Feature key"),
        ("X-Reason" = Option<String>, Header, description = "Why (or `reason` in the body)"),
    ),
    request_body(content((ReasonParam = "application/json"), (ReasonParam = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The feature, paused", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 404, description = "No such feature", body = ErrorBody),
        (status = 422, description = "Reason missing", body = ErrorBody),
    ),
    security(("admin" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, ApiError> {
    let ctx = audit
        .context_with_reason(&params, "a reason is required to pause a feature (X-Reason header or reason field)")?;
    switch(&state, &name, Change::Pause, &ctx).await
}

/// Kill switch off: the stored gates apply again, exactly as before the pause.
#[utoipa::path(post, path = "/admin/features/{name}/resume", tag = "admin", operation_id = "resume_feature",
    params(
        ("name" = String, Path, description = "Feature key"),
        ("X-Reason" = Option<String>, Header, description = "Why (or `reason` in the body)"),
    ),
    request_body(content((ReasonParam = "application/json"), (ReasonParam = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The feature, resumed", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 404, description = "No such feature", body = ErrorBody),
    ),
    security(("admin" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, ApiError> {
    let ctx = audit.context(&params)?;
    switch(&state, &name, Change::Resume, &ctx).await
}

async fn switch(
    state: &AppState,
    name: &str,
    change: Change,
    ctx: &AuditContext,
) -> Result<Json<FeatureBody>, ApiError> {
    let record = state.toggles.apply(name, &change, ctx).await?;
    Ok(Json(feature_json(&record, true, true)))
}

/// The feature's audit log, newest first.
#[utoipa::path(get, path = "/admin/features/{name}/audit", tag = "admin", operation_id = "feature_audit",
    params(("name" = String, Path, description = "Feature key"), AuditQuery),
    responses(
        (status = 200, description = "One page", body = AuditPage),
        AdminUnauthorized,
        ReadRejections,
    ),
    security((), ("admin" = [])))]
pub async fn audit(
    State(state): State<AppState>,
    _reader: AdminReadAuth,
    PathText(name): PathText,
    StrictQuery(query): StrictQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if !(1..=MAX_AUDIT_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidParameter { field: "limit", detail: "limit must be from 1 to 500".into() });
    }
    let entries = store::audit_log(&state.db, &name, limit, query.before_id).await?;
    // A full page may have more behind it; a short one is the last.
    let next_before_id = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(Json(AuditPage { entries, next_before_id }))
}

/// Queues the `suppressed` notifications of one channel and time range whose Veterans its gate enables now.
///
/// `feature` names the gate and so the channel (default: the emails toggle). For the ICN-keyed SMS and
/// push gates each participant is resolved through MPI first; one MPI gives no ICN for (not found,
/// deceased) or cannot answer stays suppressed and is counted in `unresolved`. Idempotent: a released row
/// is `queued`, no longer `suppressed`. Percentage-of-time gates are not rolled (only 100% counts) and
/// only the first of several notifications for the same participant and template within the duplicate
/// window is released. A feature that gates no channel is 400 naming `feature`.
#[utoipa::path(post, path = "/admin/notifications/release", tag = "admin", operation_id = "release_suppressed",
    request_body(content((ReleaseParams = "application/json"), (ReleaseParams = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "Counts", body = ReleaseOutcome),
        AdminUnauthorized,
        InputRejections,
    ),
    security(("admin" = [])))]
pub async fn release_suppressed(
    State(state): State<AppState>,
    audit: AdminAudit,
    params: Params,
) -> Result<Json<ReleaseOutcome>, ApiError> {
    let from = time(&params, "from")?;
    let to = optional_time(&params, "to")?;
    if to.is_some_and(|to| from >= to) {
        return Err(ApiError::InvalidParameter { field: "from", detail: "from must be before to".into() });
    }
    let dry_run = params.boolean("dry_run")?.unwrap_or(false);
    let feature = params.string("feature")?.unwrap_or(EMAILS_ENABLED).to_owned();
    // Decide on the state as it is in the database now, not as this replica last heard of it.
    state.toggles.refresh().await?;
    let request =
        ReleaseRequest { feature, from, to, dry_run, duplicate_window: state.config.accept.duplicate_window() };
    let ctx = audit.context(&params)?;
    let outcome = release::release_suppressed(&state.db, &state.toggles.snapshot(), &state.mpi, &request, &ctx).await?;
    if outcome.released > 0 && !dry_run {
        state.wake_workers.wake();
    }
    tracing::info!(
        dry_run,
        channel = %outcome.channel,
        released = outcome.released,
        suppressed = outcome.suppressed,
        unresolved = outcome.unresolved,
        "release of suppressed mail"
    );
    Ok(Json(outcome))
}

fn time(params: &Params, field: &'static str) -> Result<DateTime<Utc>, ApiError> {
    optional_time(params, field)?.ok_or(ApiError::MissingParameter { field })
}

fn optional_time(params: &Params, field: &'static str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = params.string(field)? else { return Ok(None) };
    DateTime::parse_from_rfc3339(raw).map(|t| Some(t.with_timezone(&Utc))).map_err(|_| ApiError::InvalidParameter {
        field,
        detail: format!("{field} must be an RFC 3339 time, e.g. 2026-01-01T00:00:00Z"),
    })
}
