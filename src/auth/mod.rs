//! Authentication: Sign-in Service service-account tokens (SPEC §3) and admin tokens.
//!
//! INTERFACE STUB: real RS256 verification lands in a follow-up commit.

use std::sync::Arc;

use crate::config::AuthConfig;

/// Claims of a verified service-account token that the service uses.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    pub service_account_id: String,
    /// `user_attributes.participant_id`, if the token carries one.
    pub participant_id: Option<String>,
    /// Token expiry (unix seconds).
    pub exp: i64,
}

/// Why a service-account token was refused. Mapped to vets-api's status and body in `crate::error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Service Account access token JWT is malformed")]
    Malformed,
    #[error("Service Account access token has expired")]
    Expired,
    #[error("Service Account access token body does not match signature")]
    BadSignature,
    #[error("Required scope for requested resource not found")]
    ScopeNotFound,
    /// Wrong audience, issuer, version, or service account; the label names which.
    #[error("Service Account access token is invalid")]
    InvalidClaims(&'static str),
}

#[derive(Debug, thiserror::Error)]
#[error("auth: {0}")]
pub struct AuthInitError(pub String);

/// Verifies service-account bearer tokens; caches verified tokens by hash until they expire.
pub struct ServiceAccountVerifier {}

impl ServiceAccountVerifier {
    pub fn from_config(_cfg: &AuthConfig) -> Result<Self, AuthInitError> {
        Ok(Self {})
    }

    /// Verifies `token` (without the `Bearer ` prefix) for a request to `path`.
    pub fn verify(&self, _token: &str, _path: &str) -> Result<Arc<ServiceAccount>, AuthError> {
        Err(AuthError::Malformed)
    }
}
