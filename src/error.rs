//! The HTTP error story: every handler error is an [`ApiError`], mapped to a status and a JSON body
//! here and nowhere else. Server-side causes are logged once, here; clients get opaque 5xx bodies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::outbox::AcceptError;

/// A request outcome label for `ebg_requests_total` (bounded set), carried as a response extension.
#[derive(Clone, Copy, Debug)]
pub struct Outcome(pub &'static str);

/// Errors a handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Service-account token refused (401, or 403 when expired), in vets-api's body shape.
    #[error(transparent)]
    ServiceAccount(#[from] AuthError),
    /// Admin or callback credentials missing or wrong.
    #[error("unauthorized")]
    Unauthorized,
    /// A required parameter is missing or blank (400).
    #[error("missing parameter {field}")]
    MissingParameter { field: &'static str },
    /// A parameter is present but invalid (400).
    #[error("invalid parameter {field}: {detail}")]
    InvalidParameter { field: &'static str, detail: String },
    /// The request is well-formed but cannot be processed (422).
    #[error("unprocessable {field}: {detail}")]
    Unprocessable { field: &'static str, detail: String },
    /// The named resource does not exist (404).
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The body is not JSON, form or empty (415).
    #[error("unsupported content type")]
    UnsupportedMediaType,
    /// The body is larger than `http.body_limit_bytes` (413).
    #[error("payload too large")]
    PayloadTooLarge,
    /// The body could not be read or parsed (400).
    #[error("malformed body: {0}")]
    MalformedBody(String),
    /// Not an error of the request, but it cannot be handled yet: 503 so the caller retries.
    #[error("not ready; retry later")]
    Retry,
    /// The database is unreachable: 503 so the caller retries.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The request was not recorded (accept deadline, failed transaction): 503 so the caller retries.
    /// `outcome` is its bounded label: `timeout`, `unavailable` or `commit_unknown`.
    #[error("not recorded: {detail}")]
    NotRecorded { outcome: &'static str, detail: String },
    /// A bug or an unexpected failure: opaque 500.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&e) { Self::Unavailable(e) } else { Self::Internal(e.into()) }
    }
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> Self {
        match e {
            AcceptError::KeyConflict => Self::Unprocessable {
                field: "Idempotency-Key",
                detail: "this Idempotency-Key was already used for a different request".into(),
            },
            AcceptError::Database(e) => e.into(),
            AcceptError::Closed => Self::Unavailable(sqlx::Error::PoolClosed),
            AcceptError::Deadline => {
                Self::NotRecorded { outcome: "timeout", detail: AcceptError::Deadline.to_string() }
            }
            AcceptError::NotRecorded(detail) => Self::NotRecorded { outcome: "unavailable", detail },
            AcceptError::CommitUnknown => {
                Self::NotRecorded { outcome: "commit_unknown", detail: AcceptError::CommitUnknown.to_string() }
            }
        }
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::ServiceAccount(AuthError::Expired) => StatusCode::FORBIDDEN,
            Self::ServiceAccount(_) | Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::MissingParameter { .. } | Self::InvalidParameter { .. } | Self::MalformedBody(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) | Self::Retry | Self::NotRecorded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Bounded outcome label for the request counter.
    fn outcome(&self) -> &'static str {
        match self {
            Self::ServiceAccount(AuthError::Expired) => "forbidden",
            Self::ServiceAccount(_) | Self::Unauthorized => "unauthorized",
            Self::MissingParameter { field }
            | Self::InvalidParameter { field, .. }
            | Self::Unprocessable { field, .. } => match *field {
                "template_id" => "rejected_template_id",
                "participant_id" => "rejected_participant_id",
                "Idempotency-Key" => "rejected_idempotency_key",
                _ => "rejected_other",
            },
            Self::NotFound { .. } => "not_found",
            Self::UnsupportedMediaType => "rejected_content_type",
            Self::PayloadTooLarge => "rejected_too_large",
            Self::MalformedBody(_) => "rejected_malformed",
            Self::Unavailable(_) => "unavailable",
            Self::NotRecorded { outcome, .. } => outcome,
            Self::Retry => "retry",
            Self::Internal(_) => "error",
        }
    }

    fn body(&self) -> serde_json::Value {
        let status = self.status_code();
        let code = status.as_u16().to_string();
        match self {
            // vets-api's service-account errors are a bare string under `errors`.
            Self::ServiceAccount(e) => json!({ "errors": e.to_string() }),
            Self::Unauthorized => json!({ "message": "Unauthorized" }),
            Self::MissingParameter { field } => json!({ "errors": [{
                "title": "Missing parameter",
                "detail": format!("The required parameter \"{field}\", is missing"),
                "code": "108", "status": code, "source": { "parameter": field },
            }]}),
            Self::InvalidParameter { field, detail } => json!({ "errors": [{
                "title": "Invalid field value", "detail": detail, "code": "103", "status": code,
                "source": { "parameter": field },
            }]}),
            Self::Unprocessable { field, detail } => json!({ "errors": [{
                "title": "Unprocessable Entity", "detail": detail, "code": "422", "status": code,
                "source": { "parameter": field },
            }]}),
            Self::NotFound { what } => json!({ "errors": [{
                "title": "Not Found", "detail": format!("{what} not found"), "code": "404", "status": code,
            }]}),
            Self::UnsupportedMediaType => json!({ "errors": [{
                "title": "Unsupported Media Type",
                "detail": "Send application/json, application/x-www-form-urlencoded, or no body",
                "code": "415", "status": code, "source": { "header": "Content-Type" },
            }]}),
            Self::PayloadTooLarge => json!({ "errors": [{
                "title": "Payload Too Large", "detail": "The request body is too large", "code": "413", "status": code,
                "source": { "pointer": "/" },
            }]}),
            Self::MalformedBody(detail) => json!({ "errors": [{
                "title": "Malformed request body", "detail": detail, "code": "400", "status": code,
                "source": { "pointer": "/" },
            }]}),
            Self::Unavailable(_) | Self::Retry | Self::NotRecorded { .. } => json!({ "errors": [{
                "title": "Service Unavailable", "detail": "The service is temporarily unavailable; retry later",
                "code": "503", "status": code,
            }]}),
            Self::Internal(_) => json!({ "errors": [{
                "title": "Internal Server Error", "detail": "Internal server error", "code": "500", "status": code,
            }]}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        match &self {
            Self::Internal(e) => tracing::error!(error = format!("{e:#}"), "request failed"),
            Self::Unavailable(e) => tracing::warn!(error = %e, "database unavailable; answered 503"),
            Self::NotRecorded { detail, .. } => tracing::warn!(error = %detail, "request not recorded; answered 503"),
            // The message never contains the token or PII (AuthError labels are fixed strings).
            _ => tracing::info!(status = status.as_u16(), error = %self, "request rejected"),
        }
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response.extensions_mut().insert(Outcome(self.outcome()));
        response
    }
}
