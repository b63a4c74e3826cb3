//! `POST /v0/event_bus_gateway/send_sms`, `send_push` and `send_notifications` (CHANNELS.md §1): the
//! same contract as `send_email` (auth with the route's exact scope, parameters from the query, a form
//! or JSON, unknown keys ignored, 200 with an empty body once committed), through its one accept path.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;
use uuid::Uuid;

use super::extract::{Params, ServiceAccountAuth};
use super::send_email::{AcceptedBody, accept_channels, accepted_outcome, answer, single, uuid_template};
use crate::error::ApiError;
use crate::outbox::{CHANNEL_EMAIL, CHANNEL_PUSH, CHANNEL_SMS};
use crate::state::AppState;

/// Longest VEText template id accepted (VA Notify's ids are 32 hex characters).
const MAX_PUSH_TEMPLATE_LEN: usize = 255;

/// One channel of a `send_notifications` answer (with `Accept: application/json`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelAccepted {
    /// `email`, `sms` or `push`.
    pub channel: String,
    /// The notification id of this channel (for email and SMS also the `reference` sent to VA Notify).
    pub id: Uuid,
    /// `queued`, `suppressed`, `duplicate`, or the current state of an idempotent replay.
    pub status: String,
}

/// `send_notifications` answer with `Accept: application/json`: one entry per channel requested.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NotificationsAccepted {
    pub notifications: Vec<ChannelAccepted>,
}

/// Queue an SMS telling the Veteran a decision letter is ready (to the mobile number VA Profile holds).
///
/// Same contract as `send_email`; the SMS toggle is keyed by ICN, so it is decided (and a disabled
/// Veteran's row recorded `suppressed`) by the worker once MPI has named the ICN.
#[utoipa::path(
    post,
    path = "/v0/event_bus_gateway/send_sms",
    tag = "event_bus_gateway",
    operation_id = "send_sms",
    params(
        ("template_id" = Option<Uuid>, Query, description = "VA Notify SMS template UUID (or send it in the body)"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Repeat-safe key: 1 to 255 visible ASCII characters"),
    ),
    request_body(content(
        (crate::http::openapi::TemplateParams = "application/json"),
        (crate::http::openapi::TemplateParams = "application/x-www-form-urlencoded"),
    ), description = "Optional: template_id may instead be in the query string"),
    responses(
        (status = 200, description = "Recorded: an empty text/plain body (vets-api parity), or JSON with Accept: application/json",
            content(
                (AcceptedBody = "application/json"),
                (String = "text/plain", example = ""),
            )),
        (status = 400, description = "template_id missing or not a UUID; malformed body or text", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::SendRejections,
    ),
    security(("service_account" = []))
)]
pub async fn send_sms(
    State(state): State<AppState>,
    ServiceAccountAuth(account): ServiceAccountAuth,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let template_id =
        uuid_template(&params, "template_id")?.ok_or(ApiError::MissingParameter { field: "template_id" })?;
    single(&state, &account, &headers, CHANNEL_SMS, template_id).await
}

/// Queue a push notification to the VA Flagship mobile app (by ICN, found through MPI).
///
/// `template_id` is a VEText template id: a string, not a UUID. Same contract as `send_email`; the
/// push toggle is keyed by ICN and decided by the worker.
#[utoipa::path(
    post,
    path = "/v0/event_bus_gateway/send_push",
    tag = "event_bus_gateway",
    operation_id = "send_push",
    params(
        ("template_id" = Option<String>, Query, description = "VEText template id (or send it in the body)"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Repeat-safe key: 1 to 255 visible ASCII characters"),
    ),
    request_body(content(
        (crate::http::openapi::PushTemplateParams = "application/json"),
        (crate::http::openapi::PushTemplateParams = "application/x-www-form-urlencoded"),
    ), description = "Optional: template_id may instead be in the query string"),
    responses(
        (status = 200, description = "Recorded: an empty text/plain body (vets-api parity), or JSON with Accept: application/json",
            content(
                (AcceptedBody = "application/json"),
                (String = "text/plain", example = ""),
            )),
        (status = 400, description = "template_id missing, longer than 255 characters or holding control characters; malformed body or text", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::SendRejections,
    ),
    security(("service_account" = []))
)]
pub async fn send_push(
    State(state): State<AppState>,
    ServiceAccountAuth(account): ServiceAccountAuth,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let template_id =
        push_template(&params, "template_id")?.ok_or(ApiError::MissingParameter { field: "template_id" })?;
    single(&state, &account, &headers, CHANNEL_PUSH, template_id).await
}

/// Queue every channel named, from one request: `email_template_id`, `sms_template_id` (UUIDs) and
/// `push_template_id` (a VEText id), each optional, at least one.
///
/// One Idempotency-Key covers the whole request (a replay answers with the first request's row of
/// every channel); the duplicate window applies per channel. Without any template: 400 with
/// vets-api's exact body.
#[utoipa::path(
    post,
    path = "/v0/event_bus_gateway/send_notifications",
    tag = "event_bus_gateway",
    operation_id = "send_notifications",
    params(
        ("email_template_id" = Option<Uuid>, Query, description = "VA Notify email template UUID (or send it in the body)"),
        ("sms_template_id" = Option<Uuid>, Query, description = "VA Notify SMS template UUID (or send it in the body)"),
        ("push_template_id" = Option<String>, Query, description = "VEText push template id (or send it in the body)"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Repeat-safe key: 1 to 255 visible ASCII characters; covers every channel of the request"),
    ),
    request_body(content(
        (crate::http::openapi::NotificationsParams = "application/json"),
        (crate::http::openapi::NotificationsParams = "application/x-www-form-urlencoded"),
    ), description = "Optional: the template ids may instead be in the query string"),
    responses(
        (status = 200, description = "Recorded: an empty text/plain body (vets-api parity), or JSON with Accept: application/json",
            content(
                (NotificationsAccepted = "application/json"),
                (String = "text/plain", example = ""),
            )),
        (status = 400, description = "No template id (vets-api's body), a template id of the wrong form; malformed body or text", body = crate::http::openapi::NotificationsBadRequest),
        crate::http::openapi::SendRejections,
    ),
    security(("service_account" = []))
)]
pub async fn send_notifications(
    State(state): State<AppState>,
    ServiceAccountAuth(account): ServiceAccountAuth,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let mut channels = Vec::with_capacity(3);
    if let Some(id) = uuid_template(&params, "email_template_id")? {
        channels.push((CHANNEL_EMAIL, id));
    }
    if let Some(id) = uuid_template(&params, "sms_template_id")? {
        channels.push((CHANNEL_SMS, id));
    }
    if let Some(id) = push_template(&params, "push_template_id")? {
        channels.push((CHANNEL_PUSH, id));
    }
    if channels.is_empty() {
        return Err(ApiError::NoTemplates);
    }
    let accepted = accept_channels(&state, &account, &headers, channels).await?;
    let outcome = accepted_outcome(&accepted);
    // Per channel, for `ebg_requests_total{channel}`: each channel's own outcome.
    let per_channel =
        accepted.iter().map(|(channel, a)| (*channel, accepted_outcome(&[(channel, a.clone())]))).collect();
    let notifications = accepted
        .into_iter()
        .map(|(channel, a)| ChannelAccepted { channel: channel.to_owned(), id: a.id, status: a.status.to_string() })
        .collect();
    let mut response = answer(&headers, outcome, NotificationsAccepted { notifications });
    response.extensions_mut().insert(crate::error::ChannelOutcomes(per_channel));
    Ok(response)
}

/// A VEText template id parameter: any string of 1 to 255 characters without control characters
/// (VA Notify checks the id itself); `None` when absent or blank.
fn push_template(params: &Params, field: &'static str) -> Result<Option<String>, ApiError> {
    let Some(raw) = params.string(field)? else { return Ok(None) };
    if raw.chars().count() > MAX_PUSH_TEMPLATE_LEN || raw.chars().any(char::is_control) {
        return Err(ApiError::InvalidParameter {
            field,
            detail: format!("{field} must be a VEText template id: 1 to 255 characters, no control characters"),
        });
    }
    Ok(Some(raw.to_owned()))
}
