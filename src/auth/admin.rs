//! Admin bearer tokens (SPEC §4.3, §14): named secrets compared in constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::{AdminConfig, NamedToken};

/// The configured admin tokens, each with the name the audit log records.
///
/// Only SHA-256 digests are kept: comparing fixed-length digests hides the tokens' lengths, which a plain
/// constant-time slice comparison would reveal, and the secrets themselves never stay in this value.
pub struct AdminTokens {
    tokens: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.tokens.iter().map(|(name, _)| name)).finish()
    }
}

impl AdminTokens {
    /// Every token from `[admin]` (`token` is named `ops`); empty tokens are skipped.
    pub fn from_config(cfg: &AdminConfig) -> Self {
        Self::from_named(cfg.named_tokens())
    }

    /// The read-only tokens from `admin.read_tokens`.
    pub fn readers_from_config(cfg: &AdminConfig) -> Self {
        Self::from_named(cfg.named_read_tokens())
    }

    fn from_named(named: Vec<NamedToken>) -> Self {
        Self { tokens: named.into_iter().map(|t| (t.name, digest(t.token.expose()))).collect() }
    }

    /// Whether a token of this name is still configured (a console session outlives no token).
    pub fn has_name(&self, name: &str) -> bool {
        self.tokens.iter().any(|(n, _)| n == name)
    }

    /// The name of the admin token equal to `bearer`, if any.
    ///
    /// Every configured token is compared, with no early exit, so the timing does not reveal which token
    /// (or how much of one) matched.
    pub fn authenticate(&self, bearer: &str) -> Option<String> {
        if bearer.is_empty() {
            return None;
        }
        let presented = digest(bearer);
        let mut matched = u64::MAX;
        for (index, (_, token)) in self.tokens.iter().enumerate() {
            // Lossless: a Vec never holds more than u64::MAX elements.
            let index = index as u64;
            matched = u64::conditional_select(&matched, &index, token.ct_eq(&presented));
        }
        let index = usize::try_from(matched).ok()?;
        self.tokens.get(index).map(|(name, _)| name.clone())
    }

    /// True when no admin token is configured, so every admin request is refused.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NamedToken, Secret};

    fn admin(token: &str, tokens: &[(&str, &str)]) -> AdminConfig {
        AdminConfig {
            token: Secret::new(token),
            tokens: tokens
                .iter()
                .map(|(name, token)| NamedToken { name: (*name).to_owned(), token: Secret::new(*token) })
                .collect(),
            protect_reads: true,
            read_tokens: Vec::new(),
            pii_token_names: Vec::new(),
        }
    }

    #[test]
    fn the_right_token_yields_its_name() {
        let tokens = AdminTokens::from_config(&admin("ops-token-0123456789", &[]));
        assert_eq!(tokens.authenticate("ops-token-0123456789").as_deref(), Some("ops"));
    }

    #[test]
    fn wrong_or_empty_tokens_are_refused() {
        let tokens = AdminTokens::from_config(&admin("ops-token-0123456789", &[]));
        for bearer in ["", "ops-token-012345678", "ops-token-01234567890", "OPS-TOKEN-0123456789", " "] {
            assert_eq!(tokens.authenticate(bearer), None, "{bearer:?}");
        }
    }

    #[test]
    fn several_tokens_each_yield_their_own_name() {
        let tokens = AdminTokens::from_config(&admin(
            "ops-token-0123456789",
            &[("alice", "alice-token-0123456789"), ("bob", "bob-token-0123456789"), ("blank", "")],
        ));
        assert_eq!(tokens.authenticate("ops-token-0123456789").as_deref(), Some("ops"));
        assert_eq!(tokens.authenticate("alice-token-0123456789").as_deref(), Some("alice"));
        assert_eq!(tokens.authenticate("bob-token-0123456789").as_deref(), Some("bob"));
        assert_eq!(tokens.authenticate("carol-token-0123456789"), None);
        assert!(!tokens.is_empty());
    }

    #[test]
    fn no_configured_token_refuses_everything() {
        let tokens = AdminTokens::from_config(&admin("", &[("blank", "")]));
        assert!(tokens.is_empty());
        assert_eq!(tokens.authenticate(""), None);
        assert_eq!(tokens.authenticate("anything"), None);
    }

    #[test]
    fn debug_prints_names_only() {
        let tokens = AdminTokens::from_config(&admin("ops-token-0123456789", &[("alice", "alice-token-0123456789")]));
        let printed = format!("{tokens:?}");
        assert_eq!(printed, r#"["ops", "alice"]"#);
    }
}
