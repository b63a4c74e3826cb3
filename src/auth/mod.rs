//! Authentication: Sign-in Service service-account tokens (SPEC §3) and admin tokens (SPEC §4.3, §14).
//!
//! - [`ServiceAccountVerifier`] checks the RS256 bearer token the Event Bus Gateway sends, including the
//!   per-endpoint scope, and caches verified tokens by hash.
//! - [`AdminTokens`] recognises the named admin bearer tokens in constant time.
//! - [`mint_dev_token`] signs development tokens with the key pair in `config/dev/`.
//!
//! Nothing here logs or returns a token: errors are fixed messages and `&'static str` labels only.

mod admin;
mod mint;
mod service_account;

use std::fmt;

pub use admin::AdminTokens;
pub use mint::{
    DEV_SERVICE_ACCOUNT_ID, EBG_PATHS, mint_dev_token, mint_dev_token_for, mint_token_with_claims, scope_path,
};
pub use service_account::ServiceAccountVerifier;

/// Longest participant id accepted (BGS issues numeric ids; 20 digits leaves room to grow).
pub const MAX_PARTICIPANT_ID_LEN: usize = 20;

/// True for a participant id the service accepts: 1 to [`MAX_PARTICIPANT_ID_LEN`] ASCII digits.
/// `send_email` answers 422 for anything else, and `ebg-notify token` refuses to mint it.
pub fn is_valid_participant_id(pid: &str) -> bool {
    !pid.is_empty() && pid.len() <= MAX_PARTICIPANT_ID_LEN && pid.bytes().all(|b| b.is_ascii_digit())
}

/// Claims of a verified service-account token that the service uses.
///
/// `Debug` never prints the participant id (it identifies a Veteran).
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub service_account_id: String,
    /// `user_attributes.participant_id`, if the token carries one (a JSON number is stringified).
    pub participant_id: Option<String>,
    /// Token expiry (unix seconds).
    pub exp: i64,
    /// The token's `jti`, if any: lets audit records point at a token without storing it.
    pub jti: Option<String>,
    /// Every scope the token grants (endpoint URLs). Kept so a cached token is re-checked per path.
    pub scopes: Vec<String>,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("service_account_id", &self.service_account_id)
            .field("participant_id", &self.participant_id.as_ref().map(|_| "[redacted]"))
            .field("exp", &self.exp)
            .field("jti", &self.jti)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Why a service-account token was refused. Mapped to vets-api's status and body in `crate::error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a JWT, undecodable, not RS256, or claims of the wrong JSON type.
    #[error("Service Account access token JWT is malformed")]
    Malformed,
    /// `exp` has passed (beyond the configured leeway).
    #[error("Service Account access token has expired")]
    Expired,
    /// No configured public key verifies the signature.
    #[error("Service Account access token body does not match signature")]
    BadSignature,
    /// `scopes` lacks the exact URL of the requested endpoint.
    #[error("Required scope for requested resource not found")]
    ScopeNotFound,
    /// A claim check failed; the label names which: `exp` (missing), `not_yet_valid`, `audience`, `issuer`,
    /// `version`, `service_account`.
    #[error("Service Account access token is invalid")]
    InvalidClaims(&'static str),
}

/// The authentication setup (keys, configuration) is unusable. The message names the file or key, never a secret.
#[derive(Debug, thiserror::Error)]
#[error("auth: {0}")]
pub struct AuthInitError(pub String);

/// Parses an `Authorization` header value: `Bearer <token>` (scheme case-insensitive, one space, non-empty
/// token without whitespace) gives `Some(token)`.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.split_once(' ')?;
    let well_formed =
        scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(char::is_whitespace);
    well_formed.then_some(token)
}

/// Current time as unix seconds.
fn unix_now() -> i64 {
    // A clock before 1970 is a broken host; 0 makes every token look expired rather than valid forever.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_accepts_any_scheme_case() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
    }

    #[test]
    fn bearer_token_rejects_everything_else() {
        for value in ["", "Bearer", "Bearer ", "Bearer  abc", "Bearer abc def", "Basic abc", "Bearerabc", "Token abc"] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }

    #[test]
    fn service_account_debug_hides_participant_id() {
        let account = ServiceAccount {
            service_account_id: "sa".to_owned(),
            participant_id: Some("600043201".to_owned()),
            exp: 1,
            jti: None,
            scopes: Vec::new(),
        };
        let printed = format!("{account:?}");
        assert!(!printed.contains("600043201"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }
}
