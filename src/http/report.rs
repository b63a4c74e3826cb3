//! `GET /admin/rollout/report`: the rollout report (SPEC §9) as JSON or Markdown.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AdminAuth;
use super::extract::StrictQuery;
use super::openapi::{AdminUnauthorized, ReadRejections};
use crate::error::ApiError;
use crate::report::{self, ReportRequest};
use crate::state::AppState;
use crate::toggles::EMAILS_ENABLED;

/// Query parameters of the report.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportParams {
    /// A channel's gate: `event_bus_gateway_emails_enabled` (email, the default),
    /// `event_bus_gateway_letter_ready_sms_notifications` (sms) or
    /// `event_bus_gateway_letter_ready_push_notifications` (push).
    pub feature: Option<String>,
    /// Start of the period: RFC 3339 time or a date (midnight UTC).
    pub from: Option<String>,
    /// End of the period (exclusive): RFC 3339 time or a date; default now.
    pub to: Option<String>,
    /// `json` (default) or `markdown`.
    pub format: Option<String>,
}

/// The rollout report: per toggle stage, users, requests, sent, delivered, failed, error rate, clicks and
/// click-through rate, judged against `report.max_error_rate` with at least `report.min_sample` attempted sends.
#[utoipa::path(get, path = "/admin/rollout/report", tag = "admin", operation_id = "rollout_report", params(ReportParams),
    responses(
        (status = 200, description = "The report: JSON, or Markdown with format=markdown",
            content((report::Report = "application/json"), (String = "text/markdown"))),
        AdminUnauthorized,
        ReadRejections,
    ),
    security(("admin" = []))
)]
pub async fn rollout_report(
    _admin: AdminAuth,
    State(state): State<AppState>,
    StrictQuery(params): StrictQuery<ReportParams>,
) -> Result<Response, ApiError> {
    let time = |field: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| {
                report::parse_time(v).ok_or(ApiError::InvalidParameter {
                    field,
                    detail: format!("{field} must be an RFC 3339 time or a YYYY-MM-DD date"),
                })
            })
            .transpose()
    };
    let request = ReportRequest {
        feature: params.feature.clone().unwrap_or_else(|| EMAILS_ENABLED.to_owned()),
        from: time("from", &params.from)?,
        to: time("to", &params.to)?,
        max_error_rate: state.config.report.max_error_rate,
        min_sample: state.config.report.min_sample,
        click_tracking: state.config.clicks.enabled,
    };
    let markdown = match params.format.as_deref() {
        None | Some("json") => false,
        Some("markdown" | "md") => true,
        Some(_) => {
            return Err(ApiError::InvalidParameter {
                field: "format",
                detail: "format must be json or markdown".into(),
            });
        }
    };
    let built = report::build(&state.db, &request).await?;
    Ok(if markdown {
        ([(CONTENT_TYPE, "text/markdown; charset=utf-8")], report::markdown(&built)).into_response()
    } else {
        Json(built).into_response()
    })
}
