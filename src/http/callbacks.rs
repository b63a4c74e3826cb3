//! `POST /va_notify/callbacks`: delivery status from VA Notify (SPEC §7).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::metrics as m;

/// The callback fields the service reads. `to` (the address) is deliberately not a field: it is
/// never parsed, stored or logged.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CallbackPayload {
    /// VA Notify's notification id.
    pub id: Option<Uuid>,
    /// Our notification id, as sent in `reference`.
    pub reference: Option<String>,
    /// `delivered`, `permanent-failure`, `temporary-failure`, or an in-flight status.
    pub status: String,
    pub status_reason: Option<String>,
}

/// Record a delivery-status callback from VA Notify.
#[utoipa::path(post, path = "/va_notify/callbacks", tag = "va_notify", request_body = CallbackPayload,
    responses(
        (status = 200, description = "Recorded (also for unknown notifications)"),
        (status = 400, description = "Malformed body"),
        (status = 401, description = "Bad credentials: {\"message\":\"Unauthorized\"}"),
    ),
    security(("callback_token" = []))
)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let payload: CallbackPayload = serde_json::from_slice(&body)
        .map_err(|_| ApiError::MalformedBody("the callback body is not a valid status JSON".into()))?;
    let status = status_label(&payload.status);
    metrics::counter!(m::CALLBACKS, "status" => status).increment(1);
    let reference = payload.reference.as_deref().and_then(|r| Uuid::parse_str(r).ok());
    let new_state = match status {
        "delivered" => "delivered",
        "permanent-failure" => "permanent_failure",
        "temporary-failure" => "temporary_failure",
        // In-flight statuses (`sending`, `sent`, ...) move nothing.
        _ => return Ok(Json(json!({ "status": "ok" }))),
    };
    // A final status only replaces `sent` (or a row still being sent), so a late or repeated
    // callback never rolls a notification back.
    let updated = sqlx::query(
        "update notifications set status = $3, status_reason = $4, updated_at = now(),
             delivered_at = case when $3 = 'delivered' then now() else delivered_at end,
             va_notify_id = coalesce(va_notify_id, $2)
         where (id = $1 or ($1 is null and va_notify_id = $2)) and status in ('sent', 'sending')",
    )
    .bind(reference)
    .bind(payload.id)
    .bind(new_state)
    .bind(payload.status_reason.as_deref().map(reason_label))
    .execute(&state.db)
    .await?
    .rows_affected();
    if updated == 0 {
        tracing::info!(status, "callback matched no sendable notification (unknown or already final)");
    }
    Ok(Json(json!({ "status": "ok" })))
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = state.config.notify.callback_token.expose().as_bytes();
    let presented = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match presented {
        Some(token) if !expected.is_empty() && bool::from(token.as_bytes().ct_eq(expected)) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Bounded metric label for a callback status.
fn status_label(status: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "delivered",
        "permanent-failure",
        "temporary-failure",
        "technical-failure",
        "sending",
        "sent",
        "created",
        "pending",
        "pending-virus-check",
        "virus-scan-failed",
        "validation-failed",
        "cancelled",
        "preferences-declined",
    ];
    KNOWN.iter().copied().find(|k| *k == status).unwrap_or("other")
}

/// Stored reason: VA's reason text is upstream free text; keep it short.
fn reason_label(reason: &str) -> String {
    reason.chars().take(200).collect()
}
