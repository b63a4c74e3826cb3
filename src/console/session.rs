//! Console sign-in: a token exchanged for a signed session cookie, and the CSRF token every form carries.
//!
//! The cookie holds `base64url(JSON {sid, name, role, exp}) . base64url(HMAC-SHA256)`; nothing is stored
//! server-side. Each request re-checks the signature, the expiry, and that a token of that name and role
//! is still configured, so removing a token from the configuration ends its sessions at the next restart.
//! The CSRF token is `HMAC(key, "csrf:" + sid)`: bound to the session, unguessable without the key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use maud::html;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::ConsoleError;
use super::layout::{Notice, page_signed_out};
use crate::config::{ConsoleConfig, Profile};
use crate::state::AppState;
use crate::toggles::store::AuditContext;

type HmacSha256 = Hmac<Sha256>;

/// The key that signs session cookies and CSRF tokens: `console.session_secret`, or random per process.
/// Held as a keyed HMAC, cloned for each signature, so signing never fails at request time.
#[derive(Clone)]
pub struct SessionKey(Arc<HmacSha256>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey([redacted])")
    }
}

impl SessionKey {
    /// The configured secret; when empty (allowed in the local profile only), 32 random bytes.
    pub fn from_config(cfg: &ConsoleConfig) -> Self {
        let key = if cfg.session_secret.is_empty() {
            rand::random::<[u8; 32]>().to_vec()
        } else {
            cfg.session_secret.expose().as_bytes().to_vec()
        };
        // Startup: HMAC accepts keys of any length, so this cannot fail.
        Self(Arc::new(HmacSha256::new_from_slice(&key).expect("HMAC takes any key length")))
    }

    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = (*self.0).clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
}

/// What a session may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An admin token: every change, audited under the token's name.
    Admin,
    /// A read-only token: every page, no change.
    Read,
}

/// A signed-in operator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    /// Random session id; the CSRF token is derived from it.
    pub sid: String,
    /// The token's name: what the audit log records.
    pub name: String,
    pub role: Role,
    /// Expiry, unix seconds.
    pub exp: i64,
}

impl Session {
    /// Whether this session may change anything.
    pub fn can_write(&self) -> bool {
        self.role == Role::Admin
    }

    /// The CSRF token forms of this session carry.
    pub fn csrf(&self, key: &SessionKey) -> String {
        B64.encode(key.mac(&[b"csrf:", self.sid.as_bytes()]))
    }

    fn csrf_matches(&self, key: &SessionKey, presented: &str) -> bool {
        let expected = self.csrf(key);
        expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
    }

    fn encode(&self, key: &SessionKey) -> String {
        // Serialising a struct of strings and numbers cannot fail.
        let payload = B64.encode(serde_json::to_vec(self).unwrap_or_default());
        let mac = B64.encode(key.mac(&[b"session:", payload.as_bytes()]));
        format!("{payload}.{mac}")
    }

    fn decode(key: &SessionKey, value: &str) -> Option<Self> {
        let (payload, mac) = value.split_once('.')?;
        let presented = B64.decode(mac).ok()?;
        let expected = key.mac(&[b"session:", payload.as_bytes()]);
        if expected.len() != presented.len() || !bool::from(expected.ct_eq(&presented)) {
            return None;
        }
        serde_json::from_slice(&B64.decode(payload).ok()?).ok()
    }
}

fn cookie_name(profile: Profile) -> &'static str {
    // `__Host-` makes browsers refuse the cookie unless it is Secure, host-only and Path=/.
    match profile {
        Profile::Production => "__Host-ebg_console",
        Profile::Local => "ebg_console",
    }
}

fn set_cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    cookie_header(state.config.profile, value, max_age)
}

/// `Set-Cookie` for the session: HttpOnly, SameSite=Strict, and Secure (with the `__Host-` name) in production.
fn cookie_header(profile: Profile, value: &str, max_age: u64) -> HeaderValue {
    let secure = if profile == Profile::Production { "; Secure" } else { "" };
    let name = cookie_name(profile);
    let cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    // Base64url, digits and fixed text only: always a valid header value.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The session of a request, if its cookie is valid, unexpired and its token still configured.
fn session_of(headers: &HeaderMap, state: &AppState) -> Option<Session> {
    let name = cookie_name(state.config.profile);
    let value = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())?;
    let session = Session::decode(&state.console_key, &value)?;
    let still_configured = match session.role {
        Role::Admin => state.admin.has_name(&session.name),
        Role::Read => state.readers.has_name(&session.name),
    };
    (session.exp > unix_now() && still_configured).then_some(session)
}

impl FromRequestParts<AppState> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        session_of(&parts.headers, state).ok_or(ConsoleError::SignedOut)
    }
}

/// A POST from a signed-in session: same origin, the session's CSRF token, a form body.
pub struct SessionForm {
    pub session: Session,
    pub fields: HashMap<String, String>,
    /// The request's `x-request-id`, recorded on audit rows.
    pub request_id: Option<String>,
}

impl SessionForm {
    /// A trimmed, non-blank field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// What the audit log records for a change posted with this form: the session's token name, the
    /// form's `reason` field and the request id. The console's one way to build an [`AuditContext`].
    pub fn audit(&self) -> AuditContext {
        AuditContext {
            actor: self.session.name.clone(),
            reason: self.field("reason").map(str::to_owned),
            request_id: self.request_id.clone(),
        }
    }
}

impl FromRequest<AppState> for SessionForm {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        check_origin(req.headers())?;
        let session = session_of(req.headers(), state).ok_or(ConsoleError::SignedOut)?;
        let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let fields = form_fields(req, state).await?;
        let presented = fields.get("csrf").map(String::as_str).unwrap_or_default();
        if !session.csrf_matches(&state.console_key, presented) {
            return Err(ConsoleError::Forbidden(
                "The form's security token is missing or wrong. Reload the page and try again.",
            ));
        }
        Ok(Self { session, fields, request_id })
    }
}

/// A [`SessionForm`] from an admin session; read-only sessions are refused here, whatever the page showed.
pub struct AdminForm(pub SessionForm);

impl FromRequest<AppState> for AdminForm {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let form = SessionForm::from_request(req, state).await?;
        if !form.session.can_write() {
            return Err(ConsoleError::Forbidden("This session is read-only: it cannot change anything."));
        }
        Ok(Self(form))
    }
}

/// Refuses a cross-site POST: when the browser names an `Origin`, its host must be this request's `Host`.
fn check_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or_default();
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden("Cross-site form posts are refused."))
    }
}

async fn form_fields(req: Request, state: &AppState) -> Result<HashMap<String, String>, ConsoleError> {
    let is_form = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    if !is_form {
        return Err(ConsoleError::BadRequest("The console accepts form posts only.".into()));
    }
    let body = Bytes::from_request(req, state)
        .await
        .map_err(|_| ConsoleError::BadRequest("The form could not be read (too large?).".into()))?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ConsoleError::BadRequest("The form is not valid URL encoding.".into()))?;
    Ok(pairs.into_iter().collect())
}

/// `GET /console/sign-in`.
pub async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if session_of(&headers, &state).is_some() {
        return Redirect::to("/console").into_response();
    }
    sign_in_form(None, StatusCode::OK)
}

fn sign_in_form(notice: Option<Notice>, status: StatusCode) -> Response {
    let body = html! {
        h1 { "Sign in to the ebg-notify console" }
        p { "Use an admin token to make changes, or a read-only token to look. The token is exchanged for a session cookie and is not stored." }
        form method="post" action="/console/sign-in" class="stack" {
            label for="token" { "Token" }
            input id="token" name="token" type="password" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
    };
    (status, page_signed_out("Sign in", notice, body)).into_response()
}

/// `POST /console/sign-in`: an admin or read-only token becomes a session cookie.
pub async fn sign_in(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ConsoleError> {
    check_origin(&headers)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ConsoleError::BadRequest("The form is not valid URL encoding.".into()))?;
    let token = pairs.iter().find(|(k, _)| k == "token").map(|(_, v)| v.trim()).unwrap_or_default();
    let (name, role) = match (state.admin.authenticate(token), state.readers.authenticate(token)) {
        (Some(name), _) => (name, Role::Admin),
        (None, Some(name)) => (name, Role::Read),
        (None, None) => {
            tracing::info!("console sign-in refused");
            return Ok(sign_in_form(
                Some(Notice::error("That token is not an admin or read-only token.")),
                StatusCode::UNAUTHORIZED,
            ));
        }
    };
    let lifetime = state.config.console.session();
    let session = Session {
        sid: hex::encode(rand::random::<[u8; 16]>()),
        name,
        role,
        exp: unix_now() + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2),
    };
    tracing::info!(actor = %session.name, role = ?session.role, "console sign-in");
    let mut response = Redirect::to("/console").into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, set_cookie(&state, &session.encode(&state.console_key), lifetime.as_secs()));
    Ok(response)
}

/// `POST /console/sign-out`: clears the cookie.
pub async fn sign_out(State(state): State<AppState>, _form: SessionForm) -> Response {
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().insert(SET_COOKIE, set_cookie(&state, "", 0));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn key(secret: &str) -> SessionKey {
        SessionKey::from_config(&ConsoleConfig {
            enabled: true,
            session_secret: Secret::new(secret),
            session_minutes: 60,
        })
    }

    fn session() -> Session {
        Session { sid: "abc".into(), name: "ops".into(), role: Role::Admin, exp: 10 }
    }

    #[test]
    fn a_signed_session_round_trips() {
        let k = key("k1-0123456789-0123456789-0123456789");
        let decoded = Session::decode(&k, &session().encode(&k)).unwrap();
        assert_eq!(decoded.name, "ops");
        assert_eq!(decoded.role, Role::Admin);
    }

    #[test]
    fn tampered_or_foreign_cookies_are_refused() {
        let k = key("k1-0123456789-0123456789-0123456789");
        let value = session().encode(&k);
        assert!(Session::decode(&key("another-key-0123456789-0123456789"), &value).is_none());
        let (_, mac) = value.split_once('.').unwrap();
        let forged = Session { role: Role::Admin, name: "root".into(), ..session() };
        let forged_payload = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert!(Session::decode(&k, &format!("{forged_payload}.{mac}")).is_none());
        assert!(Session::decode(&k, "garbage").is_none());
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let k = key("k1-0123456789-0123456789-0123456789");
        let s = session();
        assert!(s.csrf_matches(&k, &s.csrf(&k)));
        let other = Session { sid: "abd".into(), ..session() };
        assert!(!s.csrf_matches(&k, &other.csrf(&k)));
        assert!(!s.csrf_matches(&k, ""));
    }

    #[test]
    fn an_empty_secret_gives_a_random_key_per_process() {
        let (a, b) = (key(""), key(""));
        assert_ne!(a.mac(&[b"x"]), b.mac(&[b"x"]));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_in_production() {
        let local = cookie_header(Profile::Local, "v", 60);
        assert_eq!(local.to_str().unwrap(), "ebg_console=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=60");
        let production = cookie_header(Profile::Production, "v", 60);
        assert_eq!(
            production.to_str().unwrap(),
            "__Host-ebg_console=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("localhost:3000"));
        assert!(check_origin(&headers).is_ok());
        headers.insert(ORIGIN, HeaderValue::from_static("http://localhost:3000"));
        assert!(check_origin(&headers).is_ok());
        headers.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(check_origin(&headers).is_err());
    }
}
