//! RS256 verification of Sign-in Service service-account tokens (SPEC §3), with a cache of verified tokens.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use super::{AuthError, AuthInitError, ServiceAccount, unix_now};
use crate::config::AuthConfig;
use crate::memory::CacheBounds;

/// Longest token accepted. Real Sign-in Service tokens are ~1 KiB; the bound stops hashing and parsing
/// arbitrarily large headers before any work is done.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// SHA-256 of a token: the cache key, so the cache never holds a usable token.
type TokenDigest = [u8; 32];

/// Verifies service-account bearer tokens; caches verified tokens by hash until they expire.
///
/// `Send + Sync`; build once at startup and share it through an `Arc`.
pub struct ServiceAccountVerifier {
    /// Every key that may have signed a token (the current one first, then rotation keys).
    keys: Vec<DecodingKey>,
    audience: String,
    /// Required `iss`; `None` accepts any issuer.
    issuer: Option<String>,
    /// `scope_base_url` without trailing slashes, so `base + path` is the exact required scope.
    scope_base: String,
    /// Allowed `service_account_id`s; empty allows any.
    service_account_ids: Vec<String>,
    leeway_seconds: i64,
    /// `None` when `token_cache_capacity` is 0.
    cache: Option<moka::sync::Cache<TokenDigest, Arc<ServiceAccount>>>,
}

impl fmt::Debug for ServiceAccountVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountVerifier")
            .field("keys", &self.keys.len())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("scope_base", &self.scope_base)
            .field("service_account_ids", &self.service_account_ids)
            .field("leeway_seconds", &self.leeway_seconds)
            .field("cache", &self.cache.as_ref().map(|c| c.policy().max_capacity()))
            .finish()
    }
}

impl ServiceAccountVerifier {
    /// Loads the public key(s) and claim requirements from `[auth]` (`builtin:` names an embedded
    /// development key; the configuration has already resolved paths relative to the file naming them).
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, AuthInitError> {
        let paths = public_key_paths(cfg);
        if paths.is_empty() {
            return Err(AuthInitError("auth.public_key_path: no public key configured".to_owned()));
        }
        let keys = paths.iter().map(|p| load_public_key(p)).collect::<Result<Vec<_>, _>>()?;
        if cfg.audience.trim().is_empty() {
            return Err(AuthInitError("auth.audience: required".to_owned()));
        }
        let scope_base = cfg.scope_base_url.trim_end_matches('/').to_owned();
        if scope_base.is_empty() {
            return Err(AuthInitError("auth.scope_base_url: required".to_owned()));
        }
        let leeway_seconds = i64::try_from(cfg.leeway_seconds)
            .map_err(|_| AuthInitError("auth.leeway_seconds: too large".to_owned()))?;
        let cache = (cfg.token_cache_capacity > 0).then(|| {
            let bounds = CacheBounds { max_entries: cfg.token_cache_capacity, max_bytes: cfg.token_cache_max_bytes };
            moka::sync::Cache::builder()
                .max_capacity(bounds.max_capacity())
                .weigher(move |_: &TokenDigest, account: &Arc<ServiceAccount>| {
                    bounds.weight(std::mem::size_of::<TokenDigest>() + account_bytes(account))
                })
                .expire_after(UntilTokenExpiry { leeway_seconds })
                .build()
        });
        Ok(Self {
            keys,
            audience: cfg.audience.clone(),
            issuer: (!cfg.issuer.is_empty()).then(|| cfg.issuer.clone()),
            scope_base,
            service_account_ids: cfg.service_account_ids.clone(),
            leeway_seconds,
            cache,
        })
    }

    /// Sets the token cache's size gauges (`ebg_cache_entries` / `ebg_cache_bytes`, `cache="tokens"`).
    pub fn record_cache_size(&self) {
        if let Some(cache) = &self.cache {
            cache.run_pending_tasks();
            crate::memory::record_cache_size("tokens", cache.entry_count(), cache.weighted_size());
        }
    }

    /// Verifies `token` (the bearer value without `Bearer `) for a request to `path`, e.g.
    /// `/v0/event_bus_gateway/send_email`.
    pub fn verify(&self, token: &str, path: &str) -> Result<Arc<ServiceAccount>, AuthError> {
        self.verify_at(token, path, unix_now())
    }

    /// [`Self::verify`] at a given time (unix seconds), so tests can move the clock.
    fn verify_at(&self, token: &str, path: &str, now: i64) -> Result<Arc<ServiceAccount>, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let Some(cache) = &self.cache else {
            let account = Arc::new(self.verify_uncached(token, now)?);
            self.check_scope(&account, path)?;
            return Ok(account);
        };
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        if let Some(account) = cache.get(&digest) {
            // The cache's own eviction is approximate and uses a monotonic clock; the wall-clock check
            // here is what guarantees an expired token is never accepted. Scope is per path, so it is
            // checked on every request, not once per token.
            self.check_exp(account.exp, now)?;
            self.check_scope(&account, path)?;
            return Ok(account);
        }
        let account = Arc::new(self.verify_uncached(token, now)?);
        self.check_scope(&account, path)?;
        // Only tokens that passed every check are remembered; failures are always recomputed.
        cache.insert(digest, Arc::clone(&account));
        Ok(account)
    }

    /// Signature and every path-independent claim check.
    fn verify_uncached(&self, token: &str, now: i64) -> Result<ServiceAccount, AuthError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };

        // The algorithm is pinned by us, never chosen by the token: anything but RS256 (`none`, HS256 with
        // the public key as the secret, ...) is refused before any key is used.
        let header: Header = decode_segment(header_b64)?;
        if header.alg != "RS256" || header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        // Parsed before the (costly) signature check so garbage is rejected cheaply; nothing in it is
        // trusted until the signature is verified below.
        let claims: Claims = decode_segment(payload_b64)?;

        // The signature covers the encoded `header.payload` text exactly as received.
        let signed_message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        let mut verified = false;
        for key in &self.keys {
            // `Err` only means the signature segment is not base64url: no key can help.
            if jsonwebtoken::crypto::verify(signature_b64, signed_message, key, Algorithm::RS256)
                .map_err(|_| AuthError::Malformed)?
            {
                verified = true;
                break;
            }
        }
        if !verified {
            return Err(AuthError::BadSignature);
        }

        self.check_claims(claims, now)
    }

    fn check_claims(&self, claims: Claims, now: i64) -> Result<ServiceAccount, AuthError> {
        let exp = claims.exp.ok_or(AuthError::InvalidClaims("exp"))?;
        self.check_exp(exp, now)?;
        let latest_allowed = now.saturating_add(self.leeway_seconds);
        if claims.nbf.is_some_and(|nbf| nbf > latest_allowed) || claims.iat.is_some_and(|iat| iat > latest_allowed) {
            return Err(AuthError::InvalidClaims("not_yet_valid"));
        }
        if !claims.aud.contains(&self.audience) {
            return Err(AuthError::InvalidClaims("audience"));
        }
        if self.issuer.as_ref().is_some_and(|issuer| claims.iss.as_ref() != Some(issuer)) {
            return Err(AuthError::InvalidClaims("issuer"));
        }
        if claims.version.as_deref() != Some("V0") {
            return Err(AuthError::InvalidClaims("version"));
        }
        let service_account_id = claims
            .service_account_id
            .filter(|id| !id.is_empty())
            .filter(|id| self.service_account_ids.is_empty() || self.service_account_ids.contains(id))
            .ok_or(AuthError::InvalidClaims("service_account"))?;
        Ok(ServiceAccount {
            service_account_id,
            participant_id: claims.user_attributes.and_then(|u| u.participant_id),
            exp,
            jti: claims.jti,
            scopes: claims.scopes,
        })
    }

    fn check_exp(&self, exp: i64, now: i64) -> Result<(), AuthError> {
        // RFC 7519: the token must not be accepted on or after `exp`; leeway absorbs clock skew.
        if now >= exp.saturating_add(self.leeway_seconds) { Err(AuthError::Expired) } else { Ok(()) }
    }

    /// The token must grant exactly `scope_base + path`. Compared piecewise so the hot path allocates nothing.
    fn check_scope(&self, account: &ServiceAccount, path: &str) -> Result<(), AuthError> {
        let base = self.scope_base.as_str();
        let granted = account
            .scopes
            .iter()
            .any(|scope| scope.len() == base.len() + path.len() && scope.starts_with(base) && scope.ends_with(path));
        if granted { Ok(()) } else { Err(AuthError::ScopeNotFound) }
    }
}

/// The configured key files: the current key, then rotation keys (empty entries ignored).
fn public_key_paths(cfg: &AuthConfig) -> Vec<&Path> {
    std::iter::once(&cfg.public_key_path)
        .chain(&cfg.extra_public_key_paths)
        .filter(|p| !p.trim().is_empty())
        .map(Path::new)
        .collect()
}

fn load_public_key(path: &Path) -> Result<DecodingKey, AuthInitError> {
    let pem = crate::config::read_key_file(&path.to_string_lossy())
        .map_err(|e| AuthInitError(format!("cannot read public key `{}`: {e}", path.display())))?;
    DecodingKey::from_rsa_pem(&pem)
        .map_err(|e| AuthInitError(format!("public key `{}` is not an RSA PEM key: {e}", path.display())))
}

/// Base64url-decodes one JWT segment and parses its JSON; any failure is [`AuthError::Malformed`].
fn decode_segment<T: for<'de> Deserialize<'de>>(segment: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// The JOSE header fields we act on.
#[derive(Deserialize)]
struct Header {
    alg: String,
    /// Critical extensions must be understood or the token refused (RFC 7515 §4.1.11); we understand none.
    crit: Option<serde_json::Value>,
}

/// Sign-in Service access-token claims. Unknown claims are ignored; wrong JSON types make the token malformed.
#[derive(Deserialize)]
struct Claims {
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<i64>,
    #[serde(default)]
    aud: Audience,
    iss: Option<String>,
    version: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    service_account_id: Option<String>,
    jti: Option<String>,
    user_attributes: Option<UserAttributes>,
}

#[derive(Deserialize)]
struct UserAttributes {
    #[serde(default, deserialize_with = "string_or_number")]
    participant_id: Option<String>,
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(aud) => aud == wanted,
            Audience::Many(auds) => auds.iter().any(|aud| aud == wanted),
        }
    }
}

/// A NumericDate: integer seconds, or fractional seconds (RFC 7519 §2), truncated.
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(seconds) = number.as_i64() {
        return Ok(Some(seconds));
    }
    match number.as_f64() {
        // `as` saturates at the i64 bounds, which is the right answer for absurd dates.
        Some(seconds) if seconds.is_finite() => Ok(Some(seconds.trunc() as i64)),
        _ => Err(serde::de::Error::custom("NumericDate out of range")),
    }
}

/// A participant id as a JSON string or number; blank strings count as absent (the handler answers 422).
fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(match Option::<Raw>::deserialize(deserializer)? {
        Some(Raw::Text(text)) => Some(text).filter(|t| !t.trim().is_empty()),
        Some(Raw::Number(number)) => Some(number.to_string()),
        None => None,
    })
}

/// Estimated bytes of a cached account: the shared allocation plus its strings' heap.
fn account_bytes(account: &ServiceAccount) -> usize {
    let text = |s: &String| s.capacity();
    std::mem::size_of::<ServiceAccount>()
        + 2 * std::mem::size_of::<usize>() // Arc counters
        + text(&account.service_account_id)
        + account.participant_id.as_ref().map_or(0, text)
        + account.jti.as_ref().map_or(0, text)
        + account.scopes.capacity() * std::mem::size_of::<String>()
        + account.scopes.iter().map(text).sum::<usize>()
}

/// Evicts a cached token when it expires (plus leeway), never later.
struct UntilTokenExpiry {
    leeway_seconds: i64,
}

impl moka::Expiry<TokenDigest, Arc<ServiceAccount>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        account: &Arc<ServiceAccount>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let remaining = account.exp.saturating_add(self.leeway_seconds).saturating_sub(unix_now());
        Some(Duration::from_secs(u64::try_from(remaining).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::auth::mint_token_with_claims;

    const DEV_PRIVATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/dev/dev_private_key.pem");
    const DEV_PUBLIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/dev/dev_public_key.pem");
    const OTHER_PRIVATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/other_rsa_private.pem");
    const OTHER_PUBLIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/other_rsa_public.pem");
    const BASE: &str = "https://api.va.gov";
    const SEND_EMAIL: &str = "/v0/event_bus_gateway/send_email";
    const SEND_SMS: &str = "/v0/event_bus_gateway/send_sms";
    const AUDIENCE: &str = "http://localhost:3000";

    fn config() -> AuthConfig {
        AuthConfig {
            public_key_path: DEV_PUBLIC.to_owned(),
            extra_public_key_paths: Vec::new(),
            audience: AUDIENCE.to_owned(),
            issuer: String::new(),
            scope_base_url: BASE.to_owned(),
            service_account_ids: Vec::new(),
            leeway_seconds: 5,
            token_cache_capacity: 100,
            token_cache_max_bytes: 1 << 20,
            dev_private_key_path: DEV_PRIVATE.to_owned(),
        }
    }

    fn verifier(cfg: &AuthConfig) -> ServiceAccountVerifier {
        ServiceAccountVerifier::from_config(cfg).unwrap()
    }

    /// Claims as the Sign-in Service issues them, valid for five minutes and scoped to send_email.
    fn claims() -> Value {
        let now = unix_now();
        json!({
            "iss": "http://localhost:3000",
            "aud": AUDIENCE,
            "jti": "0f2b5c1e-jti",
            "sub": "ebg@va.gov",
            "exp": now + 300,
            "iat": now,
            "nbf": now,
            "version": "V0",
            "scopes": [format!("{BASE}{SEND_EMAIL}")],
            "service_account_id": "01b8ebaac5215f84640ade756b5a7f5e",
            "user_attributes": { "participant_id": "600043201" }
        })
    }

    fn sign_with(private_pem_path: &str, claims: &Value) -> String {
        mint_token_with_claims(&std::fs::read(private_pem_path).unwrap(), claims).unwrap()
    }

    fn sign(claims: &Value) -> String {
        sign_with(DEV_PRIVATE, claims)
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    /// A token with the given raw header JSON and claims, and an arbitrary signature segment.
    fn hand_made(header: &Value, claims: &Value, signature: &[u8]) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.{}", enc(header), enc(claims), URL_SAFE_NO_PAD.encode(signature))
    }

    #[test]
    fn valid_token_yields_its_claims() {
        let account = verifier(&config()).verify(&sign(&claims()), SEND_EMAIL).unwrap();
        assert_eq!(account.service_account_id, "01b8ebaac5215f84640ade756b5a7f5e");
        assert_eq!(account.participant_id.as_deref(), Some("600043201"));
        assert_eq!(account.jti.as_deref(), Some("0f2b5c1e-jti"));
        assert_eq!(account.exp, claims()["exp"].as_i64().unwrap());
    }

    #[test]
    fn numeric_participant_id_is_stringified_and_missing_is_none() {
        let v = verifier(&config());
        let numeric = with(claims(), "user_attributes", json!({ "participant_id": 600043201 }));
        assert_eq!(v.verify(&sign(&numeric), SEND_EMAIL).unwrap().participant_id.as_deref(), Some("600043201"));
        for attrs in [json!({}), json!(null), json!({ "participant_id": "" }), json!({ "participant_id": null })] {
            let token = sign(&with(claims(), "user_attributes", attrs.clone()));
            assert_eq!(v.verify(&token, SEND_EMAIL).unwrap().participant_id, None, "{attrs}");
        }
        let token = sign(&without(claims(), "user_attributes"));
        assert_eq!(v.verify(&token, SEND_EMAIL).unwrap().participant_id, None);
    }

    #[test]
    fn expired_token_is_refused() {
        let token = sign(&with(claims(), "exp", json!(unix_now() - 60)));
        assert_eq!(verifier(&config()).verify(&token, SEND_EMAIL), Err(AuthError::Expired));
    }

    #[test]
    fn expiry_honours_the_leeway() {
        let v = verifier(&config());
        let exp = unix_now() + 100;
        let token = sign(&with(claims(), "exp", json!(exp)));
        assert!(v.verify_at(&token, SEND_EMAIL, exp + 4).is_ok());
        assert_eq!(v.verify_at(&token, SEND_EMAIL, exp + 5), Err(AuthError::Expired));
    }

    #[test]
    fn missing_exp_is_refused() {
        let token = sign(&without(claims(), "exp"));
        assert_eq!(verifier(&config()).verify(&token, SEND_EMAIL), Err(AuthError::InvalidClaims("exp")));
    }

    #[test]
    fn exp_of_the_wrong_type_is_malformed() {
        let token = sign(&with(claims(), "exp", json!("tomorrow")));
        assert_eq!(verifier(&config()).verify(&token, SEND_EMAIL), Err(AuthError::Malformed));
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let token = sign(&with(claims(), "exp", json!(unix_now() as f64 + 300.5)));
        assert!(verifier(&config()).verify(&token, SEND_EMAIL).is_ok());
    }

    #[test]
    fn nbf_or_iat_in_the_future_is_refused() {
        let v = verifier(&config());
        for claim in ["nbf", "iat"] {
            let token = sign(&with(claims(), claim, json!(unix_now() + 120)));
            assert_eq!(v.verify(&token, SEND_EMAIL), Err(AuthError::InvalidClaims("not_yet_valid")), "{claim}");
        }
        // Within the leeway is clock skew, not a future token.
        let token = sign(&with(claims(), "nbf", json!(unix_now() + 3)));
        assert!(v.verify(&token, SEND_EMAIL).is_ok());
    }

    #[test]
    fn wrong_or_missing_audience_is_refused() {
        let v = verifier(&config());
        let wrong = sign(&with(claims(), "aud", json!("https://api.va.gov")));
        assert_eq!(v.verify(&wrong, SEND_EMAIL), Err(AuthError::InvalidClaims("audience")));
        let missing = sign(&without(claims(), "aud"));
        assert_eq!(v.verify(&missing, SEND_EMAIL), Err(AuthError::InvalidClaims("audience")));
        let wrong_array = sign(&with(claims(), "aud", json!(["https://a", "https://b"])));
        assert_eq!(v.verify(&wrong_array, SEND_EMAIL), Err(AuthError::InvalidClaims("audience")));
    }

    #[test]
    fn audience_array_containing_ours_is_accepted() {
        let token = sign(&with(claims(), "aud", json!(["https://other", AUDIENCE])));
        assert!(verifier(&config()).verify(&token, SEND_EMAIL).is_ok());
    }

    #[test]
    fn issuer_is_checked_only_when_configured() {
        let token = sign(&with(claims(), "iss", json!("https://evil.example")));
        assert!(verifier(&config()).verify(&token, SEND_EMAIL).is_ok());
        let strict = AuthConfig { issuer: "http://localhost:3000".to_owned(), ..config() };
        assert_eq!(verifier(&strict).verify(&token, SEND_EMAIL), Err(AuthError::InvalidClaims("issuer")));
        assert!(verifier(&strict).verify(&sign(&claims()), SEND_EMAIL).is_ok());
        let no_iss = sign(&without(claims(), "iss"));
        assert_eq!(verifier(&strict).verify(&no_iss, SEND_EMAIL), Err(AuthError::InvalidClaims("issuer")));
    }

    #[test]
    fn version_must_be_v0() {
        let v = verifier(&config());
        for version in [json!("V1"), json!("v0"), json!(null)] {
            let token = sign(&with(claims(), "version", version.clone()));
            assert_eq!(v.verify(&token, SEND_EMAIL), Err(AuthError::InvalidClaims("version")), "{version}");
        }
    }

    #[test]
    fn service_account_allow_list_is_enforced() {
        let cfg = AuthConfig { service_account_ids: vec!["allowed-one".to_owned()], ..config() };
        let v = verifier(&cfg);
        assert_eq!(v.verify(&sign(&claims()), SEND_EMAIL), Err(AuthError::InvalidClaims("service_account")));
        let allowed = sign(&with(claims(), "service_account_id", json!("allowed-one")));
        assert_eq!(v.verify(&allowed, SEND_EMAIL).unwrap().service_account_id, "allowed-one");
        // Without an allow-list a token must still name its service account.
        let anonymous = sign(&without(claims(), "service_account_id"));
        assert_eq!(
            verifier(&config()).verify(&anonymous, SEND_EMAIL),
            Err(AuthError::InvalidClaims("service_account"))
        );
    }

    #[test]
    fn scope_must_match_the_endpoint_url_exactly() {
        let v = verifier(&config());
        assert_eq!(v.verify(&sign(&claims()), SEND_SMS), Err(AuthError::ScopeNotFound));
        // vets-api accepted any scope that was a substring of the request URL.
        for scope in [BASE, "https://api.va.gov/v0", "api.va.gov/v0/event_bus_gateway/send_email", SEND_EMAIL] {
            let token = sign(&with(claims(), "scopes", json!([scope])));
            assert_eq!(v.verify(&token, SEND_EMAIL), Err(AuthError::ScopeNotFound), "{scope}");
        }
        // ... nor a longer URL that merely starts with ours.
        let longer = sign(&with(claims(), "scopes", json!([format!("{BASE}{SEND_EMAIL}/extra")])));
        assert_eq!(v.verify(&longer, SEND_EMAIL), Err(AuthError::ScopeNotFound));
        let none = sign(&without(claims(), "scopes"));
        assert_eq!(v.verify(&none, SEND_EMAIL), Err(AuthError::ScopeNotFound));
        let several =
            sign(&with(claims(), "scopes", json!([format!("{BASE}{SEND_SMS}"), format!("{BASE}{SEND_EMAIL}")])));
        assert!(v.verify(&several, SEND_EMAIL).is_ok());
        assert!(v.verify(&several, SEND_SMS).is_ok());
    }

    #[test]
    fn trailing_slash_on_the_scope_base_is_normalised() {
        let cfg = AuthConfig { scope_base_url: format!("{BASE}/"), ..config() };
        assert!(verifier(&cfg).verify(&sign(&claims()), SEND_EMAIL).is_ok());
    }

    #[test]
    fn alg_none_is_malformed() {
        let token = hand_made(&json!({ "alg": "none", "typ": "JWT" }), &claims(), b"");
        assert_eq!(verifier(&config()).verify(&token, SEND_EMAIL), Err(AuthError::Malformed));
        let unsigned = token.trim_end_matches('.').to_owned();
        assert_eq!(verifier(&config()).verify(&unsigned, SEND_EMAIL), Err(AuthError::Malformed));
    }

    #[test]
    fn other_algorithms_are_malformed() {
        let v = verifier(&config());
        for alg in ["RS384", "RS512", "PS256", "ES256", "EdDSA", "rs256", "", "HS256"] {
            let token = hand_made(&json!({ "alg": alg }), &claims(), b"signature");
            assert_eq!(v.verify(&token, SEND_EMAIL), Err(AuthError::Malformed), "{alg}");
        }
        let crit = hand_made(&json!({ "alg": "RS256", "crit": ["exp"] }), &claims(), b"signature");
        assert_eq!(v.verify(&crit, SEND_EMAIL), Err(AuthError::Malformed));
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_never_accepted() {
        // Key confusion: a verifier that lets the token choose the algorithm would check this HMAC with
        // the (public) RSA key bytes as the secret and accept it.
        let public_pem = std::fs::read(DEV_PUBLIC).unwrap();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        let result = verifier(&config()).verify(&token, SEND_EMAIL);
        assert!(matches!(result, Err(AuthError::Malformed | AuthError::BadSignature)), "{result:?}");
    }

    #[test]
    fn token_signed_by_another_key_has_a_bad_signature() {
        let token = sign_with(OTHER_PRIVATE, &claims());
        assert_eq!(verifier(&config()).verify(&token, SEND_EMAIL), Err(AuthError::BadSignature));
    }

    #[test]
    fn tampered_claims_have_a_bad_signature() {
        let token = sign(&claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&with(claims(), "service_account_id", json!("x"))).unwrap());
        parts[1] = &forged;
        assert_eq!(verifier(&config()).verify(&parts.join("."), SEND_EMAIL), Err(AuthError::BadSignature));
    }

    #[test]
    fn rotation_keys_are_accepted() {
        let cfg = AuthConfig { extra_public_key_paths: vec![OTHER_PUBLIC.to_owned()], ..config() };
        let v = verifier(&cfg);
        assert!(v.verify(&sign_with(OTHER_PRIVATE, &claims()), SEND_EMAIL).is_ok());
        assert!(v.verify(&sign(&claims()), SEND_EMAIL).is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        let v = verifier(&config());
        let valid = sign(&claims());
        let mut parts = valid.split('.');
        let (header, payload) = (parts.next().unwrap(), parts.next().unwrap());
        let too_long = "a".repeat(MAX_TOKEN_LEN + 1);
        let cases = [
            String::new(),
            "not-a-jwt".to_owned(),
            "a.b".to_owned(),
            "a.b.c".to_owned(),
            "....".to_owned(),
            format!("{valid}.extra"),
            format!("{header}.{payload}.%%%not-base64%%%"),
            format!("{header}.!!!.{}", "c2ln"),
            format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode("not json")),
            format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode("[1,2]")),
            format!("{}.{payload}.c2ln", URL_SAFE_NO_PAD.encode("{\"typ\":\"JWT\"}")),
            too_long,
            "Bearer x.y.z".to_owned(),
        ];
        for token in cases {
            assert_eq!(v.verify(&token, SEND_EMAIL), Err(AuthError::Malformed), "{token:.60}");
        }
    }

    #[test]
    fn cache_hit_returns_the_same_claims_and_still_checks_scope_and_expiry() {
        let v = verifier(&config());
        let exp = unix_now() + 300;
        let token = sign(&with(claims(), "exp", json!(exp)));
        let first = v.verify(&token, SEND_EMAIL).unwrap();
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        assert!(v.cache.as_ref().unwrap().contains_key(&digest), "verified token is cached");

        let second = v.verify(&token, SEND_EMAIL).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "second verification is served from the cache");
        assert_eq!(v.verify(&token, SEND_SMS), Err(AuthError::ScopeNotFound), "scope is per path");
        assert_eq!(v.verify_at(&token, SEND_EMAIL, exp + 5), Err(AuthError::Expired), "cached token expires");
        assert!(v.cache.as_ref().unwrap().contains_key(&digest), "the refusal above came from the cache");
    }

    #[test]
    fn failures_are_not_cached() {
        let v = verifier(&config());
        let tokens = [
            sign(&with(claims(), "version", json!("V1"))),
            sign_with(OTHER_PRIVATE, &claims()),
            sign(&with(claims(), "scopes", json!([]))),
        ];
        for token in &tokens {
            assert!(v.verify(token, SEND_EMAIL).is_err());
            let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
            assert!(!v.cache.as_ref().unwrap().contains_key(&digest));
        }
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let v = verifier(&AuthConfig { token_cache_capacity: 0, ..config() });
        assert!(v.cache.is_none());
        let token = sign(&claims());
        let first = v.verify(&token, SEND_EMAIL).unwrap();
        let second = v.verify(&token, SEND_EMAIL).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(first, second);
        assert_eq!(v.verify(&token, SEND_SMS), Err(AuthError::ScopeNotFound));
    }

    #[test]
    fn errors_never_carry_the_token() {
        let token = sign_with(OTHER_PRIVATE, &claims());
        let err = verifier(&config()).verify(&token, SEND_EMAIL).unwrap_err();
        let printed = format!("{err} {err:?}");
        assert!(!printed.contains(&token[..20]), "{printed}");
    }

    #[test]
    fn from_config_reports_unusable_keys() {
        let missing = AuthConfig { public_key_path: "/nonexistent/key.pem".to_owned(), ..config() };
        assert!(
            ServiceAccountVerifier::from_config(&missing).unwrap_err().to_string().contains("/nonexistent/key.pem")
        );
        let not_a_key =
            AuthConfig { public_key_path: concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").to_owned(), ..config() };
        assert!(ServiceAccountVerifier::from_config(&not_a_key).is_err());
        let none = AuthConfig { public_key_path: String::new(), ..config() };
        assert!(ServiceAccountVerifier::from_config(&none).is_err());
        let no_audience = AuthConfig { audience: String::new(), ..config() };
        assert!(ServiceAccountVerifier::from_config(&no_audience).is_err());
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ServiceAccountVerifier>();
    }
}
