//! Extractors that state a handler's requirements: who may call it and what it reads.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde_json::Value;

use crate::app::AppState;
use crate::auth::{AuthError, ServiceAccount, bearer_token};
use crate::error::ApiError;

/// A caller holding a valid service-account token whose scope is exactly this route's URL.
pub struct ServiceAccountAuth(pub Arc<ServiceAccount>);

impl FromRequestParts<AppState> for ServiceAccountAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or(AuthError::Malformed)?;
        Ok(Self(state.verifier.verify(token, parts.uri.path())?))
    }
}

/// A caller holding an admin token; carries the token's name for the audit log.
pub struct AdminAuth {
    pub name: String,
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .and_then(|token| state.admin.authenticate(token))
            .map(|name| Self { name })
            .ok_or(ApiError::Unauthorized)
    }
}

/// A caller allowed to read admin data: anyone when `admin.protect_reads` is off, else an admin or a
/// read-only token. Carries the token's name when one was presented and valid.
pub struct AdminReadAuth(pub Option<String>);

impl FromRequestParts<AppState> for AdminReadAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let bearer = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
        let name =
            bearer.and_then(|token| state.admin.authenticate(token).or_else(|| state.readers.authenticate(token)));
        match name {
            Some(name) => Ok(Self(Some(name))),
            None if !state.config.admin.protect_reads => Ok(Self(None)),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// What the audit log records about a request besides who made it: the `X-Reason` header and the
/// `x-request-id` (set by the request-id layer when the caller sent none).
pub struct RequestMeta {
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

impl RequestMeta {
    /// The reason from `X-Reason`, else from the `reason` parameter.
    pub fn reason_or(&self, params: &Params) -> Result<Option<String>, ApiError> {
        match &self.reason {
            Some(r) => Ok(Some(r.clone())),
            None => Ok(params.string("reason")?.map(str::to_owned)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Ok(Self { reason: header("x-reason"), request_id: header("x-request-id") })
    }
}

/// Request parameters merged the way Rails builds `params`: the query string, overridden by a
/// JSON or form body. Values are kept as JSON so handlers can tell a string from a number.
pub struct Params(pub HashMap<String, Value>);

impl Params {
    /// A string parameter, trimmed; `Ok(None)` when absent or blank; an error when not a string.
    pub fn string(&self, field: &'static str) -> Result<Option<&str>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim())),
            Some(_) => Err(ApiError::InvalidParameter { field, detail: format!("{field} must be a string") }),
        }
    }

    /// A scalar parameter as text, as Rack would see it: strings trimmed, numbers and booleans
    /// printed; `None` when absent, null, blank, or not a scalar.
    pub fn text(&self, field: &str) -> Option<String> {
        match self.0.get(field)? {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A boolean parameter: JSON `true`/`false` or the strings `true`/`false`/`1`/`0`; `None` when absent.
    pub fn boolean(&self, field: &'static str) -> Result<Option<bool>, ApiError> {
        match self.text(field).as_deref() {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(_) => Err(ApiError::InvalidParameter { field, detail: format!("{field} must be true or false") }),
        }
    }
}

impl FromRequest<AppState> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let mut params = HashMap::new();
        if let Some(query) = req.uri().query() {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
                .map_err(|_| ApiError::MalformedBody("the query string is not valid URL encoding".into()))?;
            params.extend(pairs.into_iter().map(|(k, v)| (k, Value::String(v))));
        }
        let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(media_type);
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::MalformedBody("the request body could not be read".into())
            }
        })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(params));
        }
        match content_type.as_deref() {
            Some("application/json") => match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(map)) => params.extend(map),
                Ok(_) => return Err(ApiError::MalformedBody("the JSON body must be an object".into())),
                Err(e) => {
                    return Err(ApiError::MalformedBody(format!(
                        "the body is not valid JSON ({})",
                        e.classify_label()
                    )));
                }
            },
            Some("application/x-www-form-urlencoded") => {
                let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
                    .map_err(|_| ApiError::MalformedBody("the form body is not valid URL encoding".into()))?;
                params.extend(pairs.into_iter().map(|(k, v)| (k, Value::String(v))));
            }
            _ => return Err(ApiError::UnsupportedMediaType),
        }
        Ok(Self(params))
    }
}

/// `application/json; charset=utf-8` -> `application/json`.
fn media_type(value: &str) -> String {
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// A short, fixed description of a JSON error (serde's messages may quote the input).
trait ClassifyLabel {
    fn classify_label(&self) -> &'static str;
}

impl ClassifyLabel for serde_json::Error {
    fn classify_label(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}
