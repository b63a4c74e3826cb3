//! VA Notify API keys: `{key_name}-{service_id}-{secret}` (SPEC §6).
//!
//! The key name may itself contain `-`, and VA's newer secrets (`token_urlsafe(64)`, 86 chars) may too,
//! so the key is read from the right by length rather than split on `-`.

use std::fmt;

use uuid::Uuid;

use super::NotifyInitError;
use crate::config::Secret;

/// Length of a hyphenated UUID, the shape of the service id and of older secrets.
const UUID_LEN: usize = 36;
/// Length of Python's `secrets.token_urlsafe(64)`: 64 bytes in unpadded URL-safe base64.
const URLSAFE_SECRET_LEN: usize = 86;

/// A parsed VA Notify API key. `Debug` never shows the secret.
#[derive(Clone)]
pub(crate) struct ApiKey {
    /// The service id, used as the JWT `iss`.
    pub(crate) service_id: Uuid,
    /// The HMAC key for the per-request JWT.
    pub(crate) secret: Secret,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("service_id", &self.service_id).field("secret", &self.secret).finish()
    }
}

impl ApiKey {
    /// Parses `notify.api_key`. Error messages describe the shape problem only; they never echo the key.
    pub(crate) fn parse(raw: &str) -> Result<Self, NotifyInitError> {
        Self::parse_setting(raw, "notify.api_key")
    }

    /// Parses a key read from the configuration key `setting` (named in errors, e.g. `notify.push_api_key`).
    pub(crate) fn parse_setting(raw: &str, setting: &str) -> Result<Self, NotifyInitError> {
        let key = raw.trim();
        let fail = |why: &str| {
            Err(NotifyInitError(format!("{setting}: {why} (expected {{key_name}}-{{service_id}}-{{secret}})")))
        };
        if key.is_empty() {
            return fail("is empty");
        }
        // Byte slicing below needs ASCII; every valid key is ASCII.
        if !key.is_ascii() {
            return fail("contains non-ASCII characters");
        }

        // A 36-char UUID secret is tried first (the common shape). An 86-char secret ending in something
        // UUID-shaped is astronomically unlikely, but falling back keeps even that key usable.
        let uuid_tail = key.len() >= UUID_LEN && Uuid::try_parse(&key[key.len() - UUID_LEN..]).is_ok();
        let candidates: &[usize] = if uuid_tail { &[UUID_LEN, URLSAFE_SECRET_LEN] } else { &[URLSAFE_SECRET_LEN] };

        let mut first_problem = None;
        for &secret_len in candidates {
            match split(key, secret_len) {
                Ok(parsed) => return Ok(parsed),
                Err(problem) => {
                    first_problem.get_or_insert(problem);
                }
            }
        }
        fail(first_problem.unwrap_or("is malformed"))
    }
}

/// Splits `key` assuming a secret of `secret_len` chars; the error is a short shape description.
fn split(key: &str, secret_len: usize) -> Result<ApiKey, &'static str> {
    if secret_len == URLSAFE_SECRET_LEN && key.len() < URLSAFE_SECRET_LEN {
        return Err("does not end in a secret (a UUID or 86 URL-safe characters)");
    }
    let (rest, secret) = key.split_at(key.len() - secret_len);
    if secret_len == URLSAFE_SECRET_LEN && !secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("does not end in a secret (a UUID or 86 URL-safe characters)");
    }
    let rest = rest.strip_suffix('-').ok_or("has no `-` between the service id and the secret")?;
    if rest.len() < UUID_LEN {
        return Err("is too short to hold a service id");
    }
    let (name_part, service_id) = rest.split_at(rest.len() - UUID_LEN);
    let service_id = Uuid::try_parse(service_id).map_err(|_| "has a service id that is not a UUID")?;
    let key_name = name_part.strip_suffix('-').ok_or("has no `-` between the key name and the service id")?;
    if key_name.is_empty() {
        return Err("has an empty key name");
    }
    Ok(ApiKey { service_id, secret: Secret::new(secret) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "6f1e4bd2-3a2c-4b7e-9c1d-2f6a8e0b7c55";
    const UUID_SECRET: &str = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";
    // 86 URL-safe chars, with `-` and `_` in it like real token_urlsafe output.
    const URLSAFE_SECRET: &str =
        "Ab-d_fGhIjKlMnOpQrStUvWxYz0123456789-_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST-_";

    #[test]
    fn urlsafe_fixture_has_the_real_length() {
        assert_eq!(URLSAFE_SECRET.len(), 86);
    }

    #[test]
    fn parses_uuid_secret() {
        let key = ApiKey::parse(&format!("my-key-name-{SERVICE}-{UUID_SECRET}")).unwrap();
        assert_eq!(key.service_id.to_string(), SERVICE);
        assert_eq!(key.secret.expose(), UUID_SECRET);
    }

    #[test]
    fn parses_86_char_urlsafe_secret() {
        let key = ApiKey::parse(&format!("ebg-{SERVICE}-{URLSAFE_SECRET}")).unwrap();
        assert_eq!(key.service_id.to_string(), SERVICE);
        assert_eq!(key.secret.expose(), URLSAFE_SECRET);
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let key = ApiKey::parse(&format!("  ebg-{SERVICE}-{UUID_SECRET}\n")).unwrap();
        assert_eq!(key.secret.expose(), UUID_SECRET);
    }

    #[test]
    fn malformed_keys_are_rejected_without_echoing_the_secret() {
        let cases = [
            String::new(),
            "just-a-name".to_owned(),
            // No key name.
            format!("{SERVICE}-{UUID_SECRET}"),
            // Empty key name.
            format!("-{SERVICE}-{UUID_SECRET}"),
            // Service id is not a UUID.
            format!("ebg-{}-{UUID_SECRET}", "x".repeat(36)),
            // Secret truncated: neither a UUID nor 86 chars.
            format!("ebg-{SERVICE}-{}", &UUID_SECRET[..35]),
            // 86-char tail with a character token_urlsafe never produces.
            format!("ebg-{SERVICE}-{}", URLSAFE_SECRET.replace('A', "+")),
            // Missing separator before the secret.
            format!("ebg-{SERVICE}{UUID_SECRET}"),
            format!("ébg-{SERVICE}-{UUID_SECRET}"),
        ];
        for raw in cases {
            let err = ApiKey::parse(&raw).unwrap_err().to_string();
            assert!(err.starts_with("notify: notify.api_key: "), "{err}");
            assert!(!err.contains(UUID_SECRET) && !err.contains("bbbb"), "secret leaked: {err}");
            assert!(!err.contains("Ab-d_"), "secret leaked: {err}");
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let key = ApiKey::parse(&format!("ebg-{SERVICE}-{UUID_SECRET}")).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains(SERVICE));
        assert!(!shown.contains(UUID_SECRET));
    }
}
