//! The per-request JWT VA Notify authenticates with (SPEC §6).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::api_key::ApiKey;

/// The claims VA Notify reads: the service id and the issue time. VA rejects `|now - iat| > 30 s`, which is
/// why a token is minted per request instead of cached.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: i64,
}

/// Mints HS256 tokens for one service. Holds the HMAC key, so it is built once per client.
pub(crate) struct TokenSigner {
    issuer: String,
    key: EncodingKey,
    /// `{"typ":"JWT","alg":"HS256"}`: jsonwebtoken's default header for HS256 serialises to exactly this.
    header: Header,
}

impl TokenSigner {
    /// The HMAC key is the secret string's bytes, as VA's own clients use it (not a decoded form).
    pub(crate) fn new(api_key: &ApiKey) -> Self {
        Self {
            issuer: api_key.service_id.to_string(),
            key: EncodingKey::from_secret(api_key.secret.expose().as_bytes()),
            header: Header::new(Algorithm::HS256),
        }
    }

    /// A token issued at `iat` (Unix seconds).
    pub(crate) fn sign_at(&self, iat: i64) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&self.header, &Claims { iss: &self.issuer, iat }, &self.key)
    }

    /// A token issued now.
    pub(crate) fn sign_now(&self) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_at(chrono::Utc::now().timestamp())
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::*;

    const SERVICE: &str = "6f1e4bd2-3a2c-4b7e-9c1d-2f6a8e0b7c55";
    const SECRET: &str = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";

    fn signer() -> TokenSigner {
        TokenSigner::new(&ApiKey::parse(&format!("ebg-{SERVICE}-{SECRET}")).unwrap())
    }

    fn decode_part(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn header_and_claims_are_exactly_what_va_expects() {
        let token = signer().sign_at(1_735_787_045).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        // Raw JSON text, so key order and the absence of extra fields are checked too.
        let header = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, r#"{"typ":"JWT","alg":"HS256"}"#);
        assert_eq!(decode_part(parts[1]), serde_json::json!({"iss": SERVICE, "iat": 1_735_787_045}));
    }

    #[test]
    fn signature_is_hmac_sha256_keyed_with_the_secret_string() {
        let token = signer().sign_at(1_700_000_000).unwrap();
        let (signing_input, signature) = token.rsplit_once('.').unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(signing_input.as_bytes());
        assert_eq!(URL_SAFE_NO_PAD.decode(signature).unwrap(), mac.finalize().into_bytes().to_vec());
    }

    #[test]
    fn sign_now_uses_the_current_time() {
        let token = signer().sign_now().unwrap();
        let claims = decode_part(token.split('.').nth(1).unwrap());
        let iat = claims["iat"].as_i64().unwrap();
        assert!((chrono::Utc::now().timestamp() - iat).abs() <= 1);
    }
}
