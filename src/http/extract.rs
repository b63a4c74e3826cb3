//! Extractors that state a handler's requirements: who may call it and what it reads.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::{AuthError, ServiceAccount, bearer_token};
use crate::error::ApiError;
use crate::input::{self, InputError, Location};
use crate::state::AppState;
use crate::toggles::store::AuditContext;

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

/// An audited admin write: the admin token's holder (401 otherwise), the `x-request-id` and the
/// `X-Reason` header (400 when it is not valid text). The one way an http handler gets the
/// [`AuditContext`] it writes with; the `reason` parameter is read from the body or query once the
/// handler has it, by [`AdminAudit::context`].
pub struct AdminAudit {
    actor: String,
    meta: RequestMeta,
}

impl AdminAudit {
    /// The admin token's name (the audit log's actor).
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The audit context; its reason is `X-Reason`, else the `reason` parameter (checked like the header).
    pub fn context(self, params: &Params) -> Result<AuditContext, ApiError> {
        let reason = self.meta.reason_or(params)?;
        Ok(AuditContext { actor: self.actor, reason, request_id: self.meta.request_id })
    }

    /// Like [`AdminAudit::context`] for a change that needs a reason: without one, a 422 naming `reason`
    /// with `detail` as its message.
    pub fn context_with_reason(self, params: &Params, detail: &'static str) -> Result<AuditContext, ApiError> {
        let ctx = self.context(params)?;
        if ctx.reason.is_none() {
            return Err(ApiError::Unprocessable { field: "reason", detail: detail.into() });
        }
        Ok(ctx)
    }
}

impl FromRequestParts<AppState> for AdminAudit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // Authentication first: a caller without a token learns nothing about how its headers were judged.
        let AdminAuth { name } = AdminAuth::from_request_parts(parts, state).await?;
        let meta = RequestMeta::from_request_parts(parts, state).await?;
        Ok(Self { actor: name, meta })
    }
}

/// What the audit log records about a request besides who made it: the `X-Reason` header and the
/// `x-request-id` (set by the request-id layer when the caller sent none).
struct RequestMeta {
    reason: Option<String>,
    request_id: Option<String>,
}

impl RequestMeta {
    /// The reason from `X-Reason`, else from the `reason` parameter.
    fn reason_or(&self, params: &Params) -> Result<Option<String>, ApiError> {
        match &self.reason {
            Some(r) => Ok(Some(r.clone())),
            None => match params.string("reason")? {
                Some(text) => Ok(input::reason(text, || Location::parameter("reason"))?),
                None => Ok(None),
            },
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // A reason is free text: UTF-8 is accepted (not only visible ASCII), bad bytes are refused
        // rather than silently dropped, which would turn a given reason into a missing one.
        let reason = match parts.headers.get("x-reason") {
            None => None,
            Some(value) => {
                let text = std::str::from_utf8(value.as_bytes())
                    .map_err(|_| InputError::InvalidUtf8(Location::Header("X-Reason")))?;
                input::reason(text, || Location::Header("X-Reason"))?
            }
        };
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        Ok(Self { reason, request_id })
    }
}

/// The route's single path parameter, percent-decoded, refused (400, naming the parameter) when it is
/// not UTF-8 or holds NUL. Replaces axum's `Path<String>`, whose rejections are plain text.
pub struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state).await.map_err(|_| {
            // The only way a matched route's parameter fails is bytes that do not decode to UTF-8.
            InputError::InvalidUtf8(Location::Pointer("/path".into()))
        })?;
        let (name, value) = params
            .iter()
            .next()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("PathText used on a route without a path parameter")))?;
        input::check_text(value, || Location::parameter(name))?;
        Ok(Self(value.to_owned()))
    }
}

/// A query string deserialised into `T`, decoded strictly (UTF-8, no NUL); a value that does not fit
/// its field (`limit=9223372036854775808`, `limit=abc`) is a 400 naming that field.
pub struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        // Checked first, so the lossy decoder below only ever sees input it decodes exactly.
        input::form_pairs(query.as_bytes())?;
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(Self).map_err(|e| {
            let field = e.path().to_string();
            let detail = format!("{field} has an invalid value");
            ApiError::BadInput(InputError::Invalid { location: Location::parameter(&field), detail })
        })
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
            let pairs = input::form_pairs(query.as_bytes())?;
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
            Some("application/json") => match input::parse_json(&body)? {
                Value::Object(map) => params.extend(map),
                _ => return Err(ApiError::MalformedBody("the JSON body must be an object".into())),
            },
            Some("application/x-www-form-urlencoded") => {
                let pairs = input::form_pairs(&body)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn audit(header_reason: Option<&str>) -> AdminAudit {
        let meta = RequestMeta { reason: header_reason.map(str::to_owned), request_id: Some("req-1".into()) };
        AdminAudit { actor: "ops".into(), meta }
    }

    fn params(reason: Option<Value>) -> Params {
        Params(reason.into_iter().map(|r| ("reason".to_owned(), r)).collect())
    }

    #[test]
    fn the_header_reason_wins_over_the_parameter() {
        let ctx = audit(Some("from header")).context(&params(Some(json!("from body")))).unwrap();
        assert_eq!(ctx.reason.as_deref(), Some("from header"));
        assert_eq!((ctx.actor.as_str(), ctx.request_id.as_deref()), ("ops", Some("req-1")));
        let ctx = audit(None).context(&params(Some(json!("from body")))).unwrap();
        assert_eq!(ctx.reason.as_deref(), Some("from body"));
        assert_eq!(audit(None).context(&params(None)).unwrap().reason, None);
    }

    #[test]
    fn a_reason_parameter_is_checked_like_the_header() {
        let nul = audit(None).context(&params(Some(json!("a\u{0}b")))).expect_err("NUL is refused");
        assert_eq!(nul.status_code(), axum::http::StatusCode::BAD_REQUEST);
        let number = audit(None).context(&params(Some(json!(5)))).expect_err("not a string");
        assert!(matches!(number, ApiError::InvalidParameter { field: "reason", .. }), "{number:?}");
    }

    #[test]
    fn a_required_reason_that_is_missing_is_a_422_naming_reason() {
        let err = audit(None).context_with_reason(&params(None), "say why").expect_err("a reason is required");
        assert!(
            matches!(err, ApiError::Unprocessable { field: "reason", ref detail } if detail == "say why"),
            "{err:?}"
        );
        assert!(audit(Some("because")).context_with_reason(&params(None), "say why").is_ok());
    }
}
