//! Guarded-rollout plans (SPEC §9): create, read, list, and the operator's overrides.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::extract::{AdminAudit, AdminAuth, AdminReadAuth, Params, PathText, StrictQuery};
use super::openapi::{AdminUnauthorized, InputRejections, ReadRejections};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::rollout::{self, Action, NewPlan, Plan, PlanDetail};
use crate::state::AppState;
use crate::toggles::EMAILS_ENABLED;

/// Plans per page when `limit` is not given, and the most one page returns.
const DEFAULT_LIST_LIMIT: i64 = 50;
const MAX_LIST_LIMIT: i64 = 500;

/// The rollout routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/rollouts", post(create).get(list))
        .route("/admin/rollouts/{id}", get(show))
        .route("/admin/rollouts/{id}/pause", post(pause))
        .route("/admin/rollouts/{id}/resume", post(resume))
        .route("/admin/rollouts/{id}/advance", post(advance))
        .route("/admin/rollouts/{id}/abort", post(abort))
}

/// Plans, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PlanList {
    pub plans: Vec<Plan>,
}

/// List query.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// Override body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OverrideParams {
    /// Why (or send it as `X-Reason`); required for pause and abort.
    pub reason: Option<String>,
}

fn plan_id(raw: &str) -> Result<Uuid, ApiError> {
    // An id that is not a UUID names no plan.
    raw.parse().map_err(|_| ApiError::NotFound { what: "rollout plan" })
}

async fn detail(state: &AppState, id: Uuid) -> Result<PlanDetail, ApiError> {
    rollout::detail(&state.db, id).await?.ok_or(ApiError::NotFound { what: "rollout plan" })
}

/// Creates a plan (state `pending`; the evaluator applies its first stage on its next pass).
///
/// Omitted fields take defaults: `feature` = `event_bus_gateway_emails_enabled`, `stages` = the seed's
/// 2, 25, 50, 75, 100% (4 h canary, then a day each; 100 attempted sends per stage), `max_error_rate` = 0.05.
#[utoipa::path(post, path = "/admin/rollouts", tag = "rollout", operation_id = "create_rollout",
    request_body(content = rollout::NewPlan, content_type = "application/json"),
    responses(
        (status = 201, description = "The plan", body = PlanDetail),
        (status = 400, description = "Invalid plan, or malformed input", body = ErrorBody),
        AdminUnauthorized,
        (status = 409, description = "The feature already has a live plan, or its gates do not allow one", body = ErrorBody),
        (status = 413, description = "Body larger than http.body_limit_bytes", body = ErrorBody),
        (status = 415, description = "Body neither JSON nor a form", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("admin" = [])))]
pub async fn create(
    State(state): State<AppState>,
    admin: AdminAuth,
    params: Params,
) -> Result<(StatusCode, Json<PlanDetail>), ApiError> {
    let mut body: serde_json::Map<String, Value> = params.0.into_iter().collect();
    body.entry("feature").or_insert_with(|| Value::String(EMAILS_ENABLED.to_owned()));
    let new: NewPlan = serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::MalformedBody(format!("not a rollout plan: {e}")))?;
    let plan = rollout::create(&state.db, &new, &admin.name).await?;
    Ok((StatusCode::CREATED, Json(detail(&state, plan.id).await?)))
}

/// Plans, newest first.
#[utoipa::path(get, path = "/admin/rollouts", tag = "rollout", operation_id = "list_rollouts", params(ListQuery),
    responses(
        (status = 200, description = "Plans", body = PlanList),
        AdminUnauthorized,
        ReadRejections,
    ),
    security((), ("admin" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _reader: AdminReadAuth,
    StrictQuery(query): StrictQuery<ListQuery>,
) -> Result<Json<PlanList>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidParameter { field: "limit", detail: "limit must be from 1 to 500".into() });
    }
    Ok(Json(PlanList { plans: rollout::list(&state.db, limit).await? }))
}

/// One plan with its decision log (each decision with its evidence).
#[utoipa::path(get, path = "/admin/rollouts/{id}", tag = "rollout", operation_id = "show_rollout",
    params(("id" = Uuid, Path, description = "Plan id")),
    responses(
        (status = 200, description = "The plan", body = PlanDetail),
        AdminUnauthorized,
        ReadRejections,
        (status = 404, description = "No such plan", body = ErrorBody),
    ),
    security((), ("admin" = [])))]
pub async fn show(
    State(state): State<AppState>,
    _reader: AdminReadAuth,
    PathText(id): PathText,
) -> Result<Json<PlanDetail>, ApiError> {
    Ok(Json(detail(&state, plan_id(&id)?).await?))
}

async fn apply(
    state: &AppState,
    audit: AdminAudit,
    id: &str,
    params: &Params,
    action: Action,
) -> Result<Json<PlanDetail>, ApiError> {
    let id = plan_id(id)?;
    let ctx = if matches!(action, Action::Pause | Action::Abort) {
        audit.context_with_reason(
            params,
            "a reason is required to pause or abort a rollout (X-Reason header or reason field)",
        )?
    } else {
        audit.context(params)?
    };
    rollout::override_plan(&state.db, id, action, &ctx, Utc::now()).await?;
    // The override may have changed the feature's gates in its transaction.
    state.toggles.refresh_after_write().await;
    Ok(Json(detail(state, id).await?))
}

/// Pauses the plan; for an `auto` plan also the feature (kill switch, gates preserved). The evaluator
/// leaves a paused plan alone until `resume`.
#[utoipa::path(post, path = "/admin/rollouts/{id}/pause", tag = "rollout", operation_id = "pause_rollout",
    params(("id" = Uuid, Path, description = "Plan id"), ("X-Reason" = Option<String>, Header, description = "Why (or `reason` in the body)")),
    request_body(content((OverrideParams = "application/json"), (OverrideParams = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The plan, paused", body = PlanDetail),
        AdminUnauthorized,
        InputRejections,
        (status = 404, description = "No such plan", body = ErrorBody),
        (status = 409, description = "The plan cannot be paused in its state", body = ErrorBody),
        (status = 422, description = "Reason missing", body = ErrorBody),
    ),
    security(("admin" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(id): PathText,
    params: Params,
) -> Result<Json<PlanDetail>, ApiError> {
    apply(&state, audit, &id, &params, Action::Pause).await
}

/// Resumes a paused plan (and the feature); the current stage starts over, so the numbers that paused
/// it are not judged again.
#[utoipa::path(post, path = "/admin/rollouts/{id}/resume", tag = "rollout", operation_id = "resume_rollout",
    params(("id" = Uuid, Path, description = "Plan id"), ("X-Reason" = Option<String>, Header, description = "Why (or `reason` in the body)")),
    request_body(content((OverrideParams = "application/json"), (OverrideParams = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The plan, running", body = PlanDetail),
        AdminUnauthorized,
        InputRejections,
        (status = 404, description = "No such plan", body = ErrorBody),
        (status = 409, description = "The plan is not paused", body = ErrorBody),
    ),
    security(("admin" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(id): PathText,
    params: Params,
) -> Result<Json<PlanDetail>, ApiError> {
    apply(&state, audit, &id, &params, Action::Resume).await
}

/// Moves to the next stage now, whatever the numbers (after the last stage: completes the plan).
#[utoipa::path(post, path = "/admin/rollouts/{id}/advance", tag = "rollout", operation_id = "advance_rollout",
    params(("id" = Uuid, Path, description = "Plan id"), ("X-Reason" = Option<String>, Header, description = "Why (or `reason` in the body)")),
    request_body(content((OverrideParams = "application/json"), (OverrideParams = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The plan, on its next stage", body = PlanDetail),
        AdminUnauthorized,
        InputRejections,
        (status = 404, description = "No such plan", body = ErrorBody),
        (status = 409, description = "The plan cannot advance in its state", body = ErrorBody),
    ),
    security(("admin" = [])))]
pub async fn advance(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(id): PathText,
    params: Params,
) -> Result<Json<PlanDetail>, ApiError> {
    apply(&state, audit, &id, &params, Action::Advance).await
}

/// Stops the plan for good; the gates stay as they are.
#[utoipa::path(post, path = "/admin/rollouts/{id}/abort", tag = "rollout", operation_id = "abort_rollout",
    params(("id" = Uuid, Path, description = "Plan id"), ("X-Reason" = Option<String>, Header, description = "Why (or `reason` in the body)")),
    request_body(content((OverrideParams = "application/json"), (OverrideParams = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The plan, aborted", body = PlanDetail),
        AdminUnauthorized,
        InputRejections,
        (status = 404, description = "No such plan", body = ErrorBody),
        (status = 409, description = "The plan already ended", body = ErrorBody),
        (status = 422, description = "Reason missing", body = ErrorBody),
    ),
    security(("admin" = [])))]
pub async fn abort(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(id): PathText,
    params: Params,
) -> Result<Json<PlanDetail>, ApiError> {
    apply(&state, audit, &id, &params, Action::Abort).await
}
