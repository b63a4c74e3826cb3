//! `POST /va_notify/callbacks`: delivery status from VA Notify (SPEC §7). The rules for what a callback
//! does live in [`crate::callbacks`]; this handler authenticates, parses and answers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use crate::auth::bearer_token;
use crate::callbacks::{self, CallbackPayload, Effect, Handled};
use crate::error::{ApiError, ErrorBody, UnauthorizedBody};
use crate::metrics as m;
use crate::outbox::channel_policy::ChannelPolicy;
use crate::state::AppState;

/// Header carrying VA Notify's HMAC signature of the body.
pub const SIGNATURE_HEADER: &str = "x-enp-signature";

/// The answer to an accepted callback: `{"status": "ok"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CallbackAnswer {
    pub status: &'static str,
}

/// Record a delivery-status callback from VA Notify.
///
/// Authenticate with a callback bearer token or with `x-enp-signature` (lowercase hex HMAC-SHA256 of
/// Python's `urlencode` of the body's fields, keyed with the VA Notify API key's secret).
#[utoipa::path(post, path = "/va_notify/callbacks", tag = "va_notify", operation_id = "receive_callback", request_body = CallbackPayload,
    params(("x-enp-signature" = Option<String>, Header, description = "VA Notify's signature of the body (instead of a bearer token)")),
    responses(
        (status = 200, description = "Recorded (also for unknown notifications)", body = CallbackAnswer),
        (status = 400, description = "Malformed body: not JSON, a field of the wrong type, NUL in text, a repeated key, a reference that is not a UUID; `source` names the field", body = ErrorBody),
        (status = 401, description = "Bad credentials", body = UnauthorizedBody),
        (status = 413, description = "Body larger than http.body_limit_bytes", body = ErrorBody),
        (status = 503, description = "Transient: the send is still being recorded or the database is down; VA Notify retries", body = ErrorBody),
    ),
    security(("callback_token" = []), ())
)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CallbackAnswer>, ApiError> {
    let auth = &state.callback_auth;
    let bearer = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    let bearer_ok = bearer.is_some_and(|t| auth.bearer_ok(t));
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            // Callers without any credentials learn nothing about how their body was judged.
            if !bearer_ok && !headers.contains_key(SIGNATURE_HEADER) {
                return Err(rejected("unauthorized", ApiError::Unauthorized));
            }
            return Err(if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                rejected("too_large", ApiError::PayloadTooLarge)
            } else {
                rejected("malformed", ApiError::MalformedBody("the body could not be read".into()))
            });
        }
    };
    let signed =
        || headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).is_some_and(|sig| auth.signature_ok(&body, sig));
    if !bearer_ok && !signed() {
        return Err(rejected("unauthorized", ApiError::Unauthorized));
    }
    let payload: CallbackPayload = callbacks::parse(&body).map_err(|e| rejected("malformed", e.into()))?;

    let status = callbacks::status_label(&payload.status);
    metrics::counter!(m::CALLBACKS, "status" => status).increment(1);
    let config = &state.config;
    let policy = ChannelPolicy::new(&config.callbacks, &config.sms, &config.dry_run);
    match callbacks::handle(&state.db, &payload, &policy).await? {
        Handled::Unknown => {
            metrics::counter!(m::CALLBACKS_UNMATCHED, "status" => status).increment(1);
            tracing::info!(status, "callback for an unknown notification");
        }
        Handled::Known(Effect::NotYet) => {
            tracing::info!(status, "callback overtook the recording of its send; asking VA Notify to retry");
            return Err(ApiError::Retry);
        }
        Handled::Known(effect) => tracing::info!(status, effect = effect.as_str(), "callback recorded"),
    }
    Ok(Json(CallbackAnswer { status: "ok" }))
}

fn rejected(reason: &'static str, error: ApiError) -> ApiError {
    metrics::counter!(m::CALLBACKS_REJECTED, "reason" => reason).increment(1);
    error
}
