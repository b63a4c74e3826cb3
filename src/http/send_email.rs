//! `POST /v0/event_bus_gateway/send_email` (SPEC §2.1): vets-api's contract, made durable.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use super::extract::{Params, ServiceAccountAuth};
use crate::auth::ServiceAccount;
use crate::error::{ApiError, Outcome};
use crate::outbox::{Accepted, CHANNEL_EMAIL, NewNotification, Status};
use crate::state::AppState;
use crate::toggles::EMAILS_ENABLED;

/// Longest Idempotency-Key accepted.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Body returned when the caller sends `Accept: application/json`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AcceptedBody {
    /// The notification id (also the `reference` sent to VA Notify).
    pub id: Uuid,
    /// `queued`, `suppressed`, `duplicate`, or the current state of an idempotent replay.
    pub status: String,
}

/// Queue an email telling the Veteran a decision letter is ready.
///
/// `template_id` may come in the query string, a form body or a JSON body. The participant is taken
/// from the service-account token. Answers 200 with an empty body once the request is committed
/// (JSON with `Accept: application/json`), including when the toggle is off (recorded as `suppressed`).
#[utoipa::path(
    post,
    path = "/v0/event_bus_gateway/send_email",
    tag = "event_bus_gateway",
    operation_id = "send_email",
    params(
        ("template_id" = Option<Uuid>, Query, description = "VA Notify template UUID (or send it in the body)"),
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
pub async fn send_email(
    State(state): State<AppState>,
    ServiceAccountAuth(account): ServiceAccountAuth,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let template_id =
        uuid_template(&params, "template_id")?.ok_or(ApiError::MissingParameter { field: "template_id" })?;
    single(&state, &account, &headers, CHANNEL_EMAIL, template_id).await
}

/// A single-channel route's accept and answer (`send_email`, `send_sms`, `send_push`).
pub(super) async fn single(
    state: &AppState,
    account: &crate::auth::ServiceAccount,
    headers: &HeaderMap,
    channel: &'static str,
    template_id: String,
) -> Result<Response, ApiError> {
    let accepted = accept_channels(state, account, headers, vec![(channel, template_id)]).await?;
    let outcome = accepted_outcome(&accepted);
    let (_, row) =
        accepted.into_iter().next().ok_or_else(|| ApiError::Internal(anyhow::anyhow!("accept returned no row")))?;
    Ok(answer(headers, outcome, AcceptedBody { id: row.id, status: row.status.to_string() }))
}

/// The shared accept path of every send_* route: reads the participant from the token and the
/// Idempotency-Key, decides the email toggle (participant-keyed, at accept), and records one row per
/// channel of `channels` in one transaction. SMS and push toggles are keyed by ICN, so the worker
/// decides them once the ICN is known. Returns each channel's outcome, in order, and attaches the
/// request's outcome label (for `ebg_requests_total`) through [`accepted_outcome`].
pub(super) async fn accept_channels(
    state: &AppState,
    account: &ServiceAccount,
    headers: &HeaderMap,
    channels: Vec<(&'static str, String)>,
) -> Result<Vec<(&'static str, Accepted)>, ApiError> {
    let participant_id = participant_id(account.participant_id.as_deref())?;
    let idempotency_key = idempotency_key(headers)?;
    let rows: Vec<NewNotification> = channels
        .iter()
        .map(|&(channel, ref template_id)| NewNotification {
            channel,
            participant_id: participant_id.to_owned(),
            template_id: template_id.clone(),
            idempotency_key: idempotency_key.clone(),
            enabled: channel != CHANNEL_EMAIL || state.toggles.is_enabled(EMAILS_ENABLED, participant_id),
        })
        .collect();
    let accepted = state.accept.accept_request(rows).await?;
    if accepted.iter().any(|a| a.status == Status::Queued && !a.replayed) {
        state.wake_workers.wake();
    }
    for (&(channel, _), a) in channels.iter().zip(&accepted) {
        tracing::info!(
            notification_id = %a.id,
            channel,
            participant = %state.pii.participant(participant_id),
            status = %a.status,
            replayed = a.replayed,
            "send accepted"
        );
    }
    Ok(channels.into_iter().map(|(c, _)| c).zip(accepted).collect())
}

/// The request's outcome label: a replay, else `accepted` if any channel was queued, else
/// `suppressed` if any was, else `duplicate`.
pub(super) fn accepted_outcome(accepted: &[(&'static str, Accepted)]) -> &'static str {
    let any = |status: Status| accepted.iter().any(|(_, a)| a.status == status);
    if accepted.iter().all(|(_, a)| a.replayed) {
        "idempotent_replay"
    } else if any(Status::Queued) {
        "accepted"
    } else if any(Status::Suppressed) {
        "suppressed"
    } else {
        "duplicate"
    }
}

/// 200 with an empty body (vets-api parity), or `body` as JSON with `Accept: application/json`;
/// carries the outcome label.
pub(super) fn answer<T: Serialize>(headers: &HeaderMap, outcome: &'static str, body: T) -> Response {
    let mut response = if wants_json(headers) {
        Json(body).into_response()
    } else {
        // vets-api parity: 200 with an empty body (labelled, so no client has to guess what it is).
        (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")]).into_response()
    };
    response.extensions_mut().insert(Outcome(outcome));
    response
}

/// A VA Notify template UUID parameter (`field`), in canonical text form; `None` when absent.
pub(super) fn uuid_template(params: &Params, field: &'static str) -> Result<Option<String>, ApiError> {
    let Some(raw) = params.string(field)? else { return Ok(None) };
    Uuid::parse_str(raw)
        .map(|id| Some(id.to_string()))
        .map_err(|_| ApiError::InvalidParameter { field, detail: format!("{field} must be a VA Notify template UUID") })
}

fn participant_id(from_token: Option<&str>) -> Result<&str, ApiError> {
    let pid = from_token.map(str::trim).filter(|p| !p.is_empty()).ok_or_else(|| ApiError::Unprocessable {
        field: "participant_id",
        detail: "the service account token has no user_attributes.participant_id".into(),
    })?;
    if !crate::auth::is_valid_participant_id(pid) {
        return Err(ApiError::Unprocessable {
            field: "participant_id",
            detail: "user_attributes.participant_id must be a numeric participant id".into(),
        });
    }
    Ok(pid)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let invalid = |detail: &str| ApiError::InvalidParameter { field: "Idempotency-Key", detail: detail.into() };
    let key = value.to_str().map_err(|_| invalid("Idempotency-Key must be visible ASCII"))?.trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(invalid("Idempotency-Key must be 1 to 255 characters"));
    }
    Ok(Some(key.to_owned()))
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participant_ids_must_be_numeric() {
        assert_eq!(participant_id(Some(" 600061742 ")).unwrap(), "600061742");
        assert!(participant_id(None).is_err());
        assert!(participant_id(Some("")).is_err());
        assert!(participant_id(Some("1; drop table notifications")).is_err());
        assert!(participant_id(Some("123456789012345678901")).is_err());
    }
}
