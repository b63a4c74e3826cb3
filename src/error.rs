//! The HTTP error story: every handler error is an [`ApiError`], mapped to a status and a JSON body
//! here and nowhere else. Server-side causes are logged once, here; clients get opaque 5xx bodies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::input::{InputError, Location};
use crate::outbox::AcceptError;
use crate::report::ReportError;
use crate::rollout::RolloutError;
use crate::toggles::release::ReleaseError;
use crate::toggles::store::StoreError;

/// Error body for 4xx/5xx answers (vets-api's JSON:API-style shape); each error names the parameter,
/// header or body position at fault in `source` when there is one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub errors: Vec<ErrorItem>,
}

/// One error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorItem {
    pub title: String,
    pub detail: String,
    /// vets-api's error code, e.g. `108` (missing parameter), `103` (invalid value).
    pub code: String,
    /// The HTTP status, as a string.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<ErrorSource>,
}

/// vets-api's answer to `send_notifications` without any template id:
/// `{"errors":[{"title":"Bad Request","detail":"At least one of …","status":"400"}]}` exactly.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BareErrorBody {
    pub errors: Vec<BareErrorItem>,
}

/// One error of [`BareErrorBody`]: no code, no source.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BareErrorItem {
    pub title: String,
    pub detail: String,
    pub status: String,
}

/// What an error is about: `{"parameter": "template_id"}`, `{"header": "Content-Type"}` or `{"pointer": "/"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorSource {
    Parameter(String),
    Header(String),
    Pointer(String),
}

impl From<Location> for ErrorSource {
    fn from(location: Location) -> Self {
        match location {
            Location::Parameter(name) => Self::Parameter(name),
            Location::Pointer(pointer) => Self::Pointer(pointer),
            Location::Header(name) => Self::Header(name.to_owned()),
        }
    }
}

/// vets-api's service-account error: a bare message, e.g. "Service Account access token has expired".
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceAccountErrorBody {
    pub errors: String,
}

/// Admin and callback credentials refused: `{"message": "Unauthorized"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnauthorizedBody {
    pub message: String,
}

/// vets-api's detail for `send_notifications` without any template id (CHANNELS.md §1).
pub const NO_TEMPLATES_DETAIL: &str =
    "At least one of email_template_id, push_template_id, or sms_template_id is required";

/// A request outcome label for `ebg_requests_total` (bounded set), carried as a response extension.
#[derive(Clone, Copy, Debug)]
pub struct Outcome(pub &'static str);

/// Each channel of an answered `send_notifications` request with its own outcome label, carried as a
/// response extension: `ebg_requests_total` counts such a request once per channel it asked for.
#[derive(Clone, Debug)]
pub struct ChannelOutcomes(pub Vec<(&'static str, &'static str)>);

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
    /// `send_notifications` without any template id (400, vets-api's exact body).
    #[error("no template id")]
    NoTemplates,
    /// A parameter is present but invalid (400).
    #[error("invalid parameter {field}: {detail}")]
    InvalidParameter { field: &'static str, detail: String },
    /// Text that is not UTF-8 or holds NUL, a JSON key given twice, or a body that is not JSON (400).
    #[error(transparent)]
    BadInput(#[from] InputError),
    /// The request is well-formed but cannot be processed (422).
    #[error("unprocessable {field}: {detail}")]
    Unprocessable { field: &'static str, detail: String },
    /// The request conflicts with the resource's current state (409), e.g. a second live plan.
    #[error("conflict {field}: {detail}")]
    Conflict { field: &'static str, detail: String },
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

/// A toggle write of the admin routes (`/admin/features/{name}/...`). The Flipper API answers the same
/// errors in Flipper's own format (`http::flipper_api::FlipperError`).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound | StoreError::InvalidName => Self::NotFound { what: "feature" },
            // The admin routes send neither percentages nor actors: one of these is a bug.
            StoreError::InvalidPercentage | StoreError::InvalidActor => Self::Internal(e.into()),
            StoreError::Database(e) => e.into(),
        }
    }
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Invalid { field, detail } => Self::InvalidParameter { field, detail: detail.to_owned() },
            RolloutError::NotFound => Self::NotFound { what: "rollout plan" },
            // Conflicts with the current state of the plan or the feature: the request itself was fine.
            RolloutError::AlreadyLive | RolloutError::Feature(_) => {
                Self::Conflict { field: "feature", detail: e.to_string() }
            }
            RolloutError::InvalidTransition { .. } => Self::Conflict { field: "state", detail: e.to_string() },
            RolloutError::Store(e) => Self::Internal(e.into()),
            RolloutError::Database(e) => e.into(),
        }
    }
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::UnknownFeature => Self::InvalidParameter { field: "feature", detail: e.to_string() },
            ReportError::EmptyRange => Self::InvalidParameter { field: "from", detail: e.to_string() },
            ReportError::Database(e) => e.into(),
        }
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::NotAGate => Self::InvalidParameter { field: "feature", detail: e.to_string() },
            ReleaseError::Database(e) => e.into(),
        }
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::ServiceAccount(AuthError::Expired) => StatusCode::FORBIDDEN,
            Self::ServiceAccount(_) | Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::MissingParameter { .. }
            | Self::NoTemplates
            | Self::InvalidParameter { .. }
            | Self::MalformedBody(_)
            | Self::BadInput(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict { .. } => StatusCode::CONFLICT,
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
            | Self::Unprocessable { field, .. }
            | Self::Conflict { field, .. } => match *field {
                "template_id" | "email_template_id" | "sms_template_id" | "push_template_id" => "rejected_template_id",
                "participant_id" => "rejected_participant_id",
                "Idempotency-Key" => "rejected_idempotency_key",
                _ => "rejected_other",
            },
            Self::NoTemplates => "rejected_template_id",
            Self::NotFound { .. } => "not_found",
            Self::UnsupportedMediaType => "rejected_content_type",
            Self::PayloadTooLarge => "rejected_too_large",
            Self::MalformedBody(_) | Self::BadInput(_) => "rejected_malformed",
            Self::Unavailable(_) => "unavailable",
            Self::NotRecorded { outcome, .. } => outcome,
            Self::Retry => "retry",
            Self::Internal(_) => "error",
        }
    }

    fn body(&self) -> Response {
        let status = self.status_code();
        let error = |title: &str, detail: String, code: &str, source: Option<ErrorSource>| {
            Json(ErrorBody {
                errors: vec![ErrorItem {
                    title: title.to_owned(),
                    detail,
                    code: code.to_owned(),
                    status: status.as_u16().to_string(),
                    source,
                }],
            })
            .into_response()
        };
        let parameter = |field: &str| Some(ErrorSource::Parameter(field.to_owned()));
        let pointer = || Some(ErrorSource::Pointer("/".to_owned()));
        match self {
            // vets-api's service-account errors are a bare string under `errors`.
            Self::ServiceAccount(e) => Json(ServiceAccountErrorBody { errors: e.to_string() }).into_response(),
            Self::Unauthorized => Json(UnauthorizedBody { message: "Unauthorized".into() }).into_response(),
            Self::NoTemplates => Json(BareErrorBody {
                errors: vec![BareErrorItem {
                    title: "Bad Request".into(),
                    detail: NO_TEMPLATES_DETAIL.into(),
                    status: "400".into(),
                }],
            })
            .into_response(),
            Self::MissingParameter { field } => error(
                "Missing parameter",
                format!("The required parameter \"{field}\", is missing"),
                "108",
                parameter(field),
            ),
            Self::InvalidParameter { field, detail } => {
                error("Invalid field value", detail.clone(), "103", parameter(field))
            }
            Self::BadInput(e @ InputError::Json(_)) => error("Malformed request body", e.to_string(), "400", pointer()),
            Self::BadInput(e) => error("Invalid field value", e.to_string(), "103", Some(e.location().into())),
            Self::Unprocessable { field, detail } => {
                error("Unprocessable Entity", detail.clone(), "422", parameter(field))
            }
            Self::Conflict { field, detail } => error("Conflict", detail.clone(), "409", parameter(field)),
            Self::NotFound { what } => error("Not Found", format!("{what} not found"), "404", None),
            Self::UnsupportedMediaType => error(
                "Unsupported Media Type",
                "Send application/json, application/x-www-form-urlencoded, or no body".into(),
                "415",
                Some(ErrorSource::Header("Content-Type".into())),
            ),
            Self::PayloadTooLarge => {
                error("Payload Too Large", "The request body is too large".into(), "413", pointer())
            }
            Self::MalformedBody(detail) => error("Malformed request body", detail.clone(), "400", pointer()),
            Self::Unavailable(_) | Self::Retry | Self::NotRecorded { .. } => {
                error("Service Unavailable", "The service is temporarily unavailable; retry later".into(), "503", None)
            }
            Self::Internal(_) => error("Internal Server Error", "Internal server error".into(), "500", None),
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
        let mut response = (status, self.body()).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response.extensions_mut().insert(Outcome(self.outcome()));
        response
    }
}
