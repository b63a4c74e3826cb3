//! Minting RS256 tokens: development tokens for `ebg-notify token`, and arbitrary claims for tests and bench/.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::{AuthInitError, unix_now};
use crate::config::AuthConfig;

/// The `service_account_id` (and `sub`) of development tokens.
pub const DEV_SERVICE_ACCOUNT_ID: &str = "ebg-local-dev";

/// Every Event Bus Gateway endpoint path; a development token is scoped to all of them.
pub const EBG_PATHS: [&str; 4] = [
    "/v0/event_bus_gateway/send_email",
    "/v0/event_bus_gateway/send_sms",
    "/v0/event_bus_gateway/send_push",
    "/v0/event_bus_gateway/send_notifications",
];

/// The EBG route path a `--scope` value names: an action (`send_sms`), its path
/// (`/v0/event_bus_gateway/send_sms`) or its scope URL (`{scope_base_url}/v0/event_bus_gateway/send_sms`).
/// The error lists the accepted values.
pub fn scope_path(value: &str, scope_base_url: &str) -> Result<&'static str, String> {
    let value = value.trim();
    let base = scope_base_url.trim_end_matches('/');
    EBG_PATHS
        .iter()
        .find(|path| {
            let action = path.rsplit('/').next().unwrap_or_default();
            value == action || value == **path || value.strip_prefix(base) == Some(path)
        })
        .copied()
        .ok_or_else(|| {
            let actions: Vec<&str> = EBG_PATHS.iter().filter_map(|p| p.rsplit('/').next()).collect();
            format!(
                "unknown scope `{value}`: expected one of {} (or its path /v0/event_bus_gateway/<action>, or {base}/v0/event_bus_gateway/<action>)",
                actions.join(", ")
            )
        })
}

/// Issuer of development tokens when `auth.issuer` is empty.
const DEFAULT_DEV_ISSUER: &str = "http://localhost:3000";

/// Mints a development token signed with `cfg.dev_private_key_path` (RS256) for `participant_id`, valid for
/// `ttl`, with the claims the Sign-in Service issues: `aud` = `cfg.audience`, `iss` = `cfg.issuer` (or
/// `http://localhost:3000`), `version` `V0`, `scopes` = `scope_base_url` + each path in [`EBG_PATHS`],
/// `service_account_id` [`DEV_SERVICE_ACCOUNT_ID`], a random `jti`.
///
/// An empty `participant_id` mints a token without one, to exercise the 422 answer.
pub fn mint_dev_token(cfg: &AuthConfig, participant_id: &str, ttl: Duration) -> Result<String, AuthInitError> {
    mint_dev_token_for(cfg, participant_id, ttl, &EBG_PATHS)
}

/// Like [`mint_dev_token`], scoped to the given route paths only (each one of [`EBG_PATHS`], see
/// [`scope_path`]), as the Sign-in Service scopes a service account to the URLs it may call.
pub fn mint_dev_token_for(
    cfg: &AuthConfig,
    participant_id: &str,
    ttl: Duration,
    paths: &[&str],
) -> Result<String, AuthInitError> {
    if cfg.dev_private_key_path.trim().is_empty() {
        return Err(AuthInitError(
            "auth.dev_private_key_path: not set (development tokens are not available in this profile)".to_owned(),
        ));
    }
    let private_key = crate::config::read_key_file(&cfg.dev_private_key_path).map_err(|e| {
        AuthInitError(format!("cannot read development private key `{}`: {e}", cfg.dev_private_key_path))
    })?;

    let now = unix_now();
    let ttl_seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let issuer = if cfg.issuer.is_empty() { DEFAULT_DEV_ISSUER } else { cfg.issuer.as_str() };
    let base = cfg.scope_base_url.trim_end_matches('/');
    let scopes: Vec<String> = paths.iter().map(|path| format!("{base}{path}")).collect();
    let user_attributes =
        if participant_id.is_empty() { json!({}) } else { json!({ "participant_id": participant_id }) };
    let claims = json!({
        "iss": issuer,
        "aud": cfg.audience,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": DEV_SERVICE_ACCOUNT_ID,
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(ttl_seconds),
        "version": "V0",
        "scopes": scopes,
        "service_account_id": DEV_SERVICE_ACCOUNT_ID,
        "user_attributes": user_attributes,
    });
    mint_token_with_claims(&private_key, &claims)
}

/// Signs `claims` as an RS256 JWT with a PEM private key (PKCS#8 or PKCS#1). For tests and bench/.
pub fn mint_token_with_claims(private_key_pem: &[u8], claims: &serde_json::Value) -> Result<String, AuthInitError> {
    // The key error never includes key material, only what was wrong with it.
    let key = EncodingKey::from_rsa_pem(private_key_pem)
        .map_err(|e| AuthInitError(format!("private key is not an RSA PEM key: {e}")))?;
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key)
        .map_err(|e| AuthInitError(format!("cannot sign token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ServiceAccountVerifier;

    fn config() -> AuthConfig {
        AuthConfig {
            public_key_path: concat!(env!("CARGO_MANIFEST_DIR"), "/config/dev/dev_public_key.pem").to_owned(),
            extra_public_key_paths: Vec::new(),
            audience: "http://localhost:3000".to_owned(),
            issuer: String::new(),
            scope_base_url: "http://localhost:3000/".to_owned(),
            service_account_ids: Vec::new(),
            leeway_seconds: 5,
            token_cache_capacity: 10,
            token_cache_max_bytes: 1 << 20,
            dev_private_key_path: concat!(env!("CARGO_MANIFEST_DIR"), "/config/dev/dev_private_key.pem").to_owned(),
        }
    }

    #[test]
    fn dev_token_verifies_on_every_ebg_path() {
        let cfg = config();
        let token = mint_dev_token(&cfg, "600043201", Duration::from_secs(600)).unwrap();
        let verifier = ServiceAccountVerifier::from_config(&cfg).unwrap();
        for path in EBG_PATHS {
            let account = verifier.verify(&token, path).unwrap();
            assert_eq!(account.service_account_id, DEV_SERVICE_ACCOUNT_ID);
            assert_eq!(account.participant_id.as_deref(), Some("600043201"));
            assert!(account.jti.is_some());
        }
        assert!(verifier.verify(&token, "/flipper/api/features").is_err());
    }

    #[test]
    fn dev_token_respects_a_configured_issuer_and_allow_list() {
        let cfg = AuthConfig {
            issuer: "https://staging-api.va.gov".to_owned(),
            service_account_ids: vec![DEV_SERVICE_ACCOUNT_ID.to_owned()],
            ..config()
        };
        let token = mint_dev_token(&cfg, "1", Duration::from_secs(60)).unwrap();
        assert!(ServiceAccountVerifier::from_config(&cfg).unwrap().verify(&token, EBG_PATHS[0]).is_ok());
    }

    #[test]
    fn dev_token_without_participant_id() {
        let cfg = config();
        let token = mint_dev_token(&cfg, "", Duration::from_secs(60)).unwrap();
        let account = ServiceAccountVerifier::from_config(&cfg).unwrap().verify(&token, EBG_PATHS[0]).unwrap();
        assert_eq!(account.participant_id, None);
    }

    #[test]
    fn minting_needs_the_development_key() {
        let cfg = AuthConfig { dev_private_key_path: String::new(), ..config() };
        assert!(mint_dev_token(&cfg, "1", Duration::from_secs(60)).is_err());
        let cfg = AuthConfig { dev_private_key_path: "/nonexistent/dev.pem".to_owned(), ..config() };
        assert!(mint_dev_token(&cfg, "1", Duration::from_secs(60)).is_err());
    }

    #[test]
    fn shipped_local_configuration_mints_and_verifies() {
        // Relative key paths resolve against the working directory, which is the crate root under `cargo test`.
        let cfg = crate::config::Config::load_from(Vec::new()).unwrap().auth;
        let token = mint_dev_token(&cfg, "600043201", Duration::from_secs(60)).unwrap();
        let verifier = ServiceAccountVerifier::from_config(&cfg).unwrap();
        assert!(verifier.verify(&token, "/v0/event_bus_gateway/send_email").is_ok());
    }

    #[test]
    fn scoped_tokens_verify_on_their_paths_only() {
        let cfg = config();
        let paths = [EBG_PATHS[1], EBG_PATHS[3]];
        let token = mint_dev_token_for(&cfg, "600043201", Duration::from_secs(60), &paths).unwrap();
        let verifier = ServiceAccountVerifier::from_config(&cfg).unwrap();
        for path in EBG_PATHS {
            assert_eq!(verifier.verify(&token, path).is_ok(), paths.contains(&path), "{path}");
        }
    }

    #[test]
    fn scope_values_name_a_route_by_action_path_or_url() {
        let base = "http://localhost:3000/";
        for value in
            ["send_sms", "/v0/event_bus_gateway/send_sms", "http://localhost:3000/v0/event_bus_gateway/send_sms"]
        {
            assert_eq!(scope_path(value, base), Ok("/v0/event_bus_gateway/send_sms"), "{value}");
        }
        assert_eq!(scope_path("send_notifications", base), Ok("/v0/event_bus_gateway/send_notifications"));
        for bad in ["send_fax", "https://api.va.gov/v0/event_bus_gateway/send_sms", "", "/flipper/api/features"] {
            let err = scope_path(bad, base).unwrap_err();
            assert!(err.contains("send_email, send_sms, send_push, send_notifications"), "{err}");
        }
    }

    #[test]
    fn a_public_key_cannot_sign() {
        let public = std::fs::read(&config().public_key_path).unwrap();
        assert!(mint_token_with_claims(&public, &json!({})).is_err());
    }
}
