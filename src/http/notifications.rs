//! `GET /admin/notifications/{id}`: one notification's history (state, attempts, callbacks, clicks),
//! without PII; the participant id itself only for tokens named in `admin.pii_token_names`.

use axum::Json;
use axum::extract::State;
use uuid::Uuid;

use super::AdminReadAuth;
use super::extract::PathText;
use super::openapi::{AdminUnauthorized, ReadRejections};
use crate::error::ApiError;
use crate::outbox::history::{self, NotificationHistory};
use crate::state::AppState;

/// A notification's history: the row's state, reason, channel, template and times, every VA Notify
/// attempt (outcome, HTTP status, VA Notify id, duration), every delivery-status callback, and the click
/// counts. The participant appears as the keyed hash the logs use; the raw id only for admin tokens
/// listed in `admin.pii_token_names`.
#[utoipa::path(get, path = "/admin/notifications/{id}", tag = "admin", operation_id = "notification_history",
    params(("id" = Uuid, Path, description = "Notification id (the `id` send_email answers with)")),
    responses(
        (status = 200, description = "The notification's history", body = NotificationHistory),
        (status = 404, description = "No such notification", body = crate::http::openapi::ErrorBody),
        AdminUnauthorized,
        ReadRejections,
    ),
    security((), ("admin" = [])))]
pub async fn show(
    State(state): State<AppState>,
    reader: AdminReadAuth,
    PathText(id): PathText,
) -> Result<Json<NotificationHistory>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::InvalidParameter { field: "id", detail: "id must be a notification UUID".into() })?;
    let reveal = reader.0.as_deref().is_some_and(|name| state.config.admin.may_see_pii(name));
    let found = history::history(&state.db, id, &state.pii, reveal).await?;
    found.map(Json).ok_or(ApiError::NotFound { what: "notification" })
}
