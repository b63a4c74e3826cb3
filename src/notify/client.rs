//! One HTTP call to VA Notify's `POST /v2/notifications/email` (SPEC §6). Rate limiting and the breaker
//! sit around it in [`super::NotifyClient`].

use serde::Serialize;
use uuid::Uuid;

use super::api_key::ApiKey;
use super::classify::{classify_failure, classify_transport, parse_created, parse_list};
use super::jwt::TokenSigner;
use super::{EmailRequest, ErrorClass, NotifyError, NotifyInitError, SentNotification};

/// The request body. VA's schema sets `additionalProperties: false`, so this struct is the whole list of
/// keys we may send; `callback_url` is left out entirely (not `null`) when none is configured.
#[derive(Serialize)]
struct EmailBody<'a> {
    template_id: Uuid,
    recipient_identifier: RecipientIdentifier<'a>,
    personalisation: Personalisation<'a>,
    reference: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<&'a str>,
}

#[derive(Serialize)]
struct RecipientIdentifier<'a> {
    id_type: &'static str,
    id_value: &'a str,
}

#[derive(Serialize)]
struct Personalisation<'a> {
    host: &'a str,
    first_name: &'a str,
}

/// Talks to a live VA Notify.
pub(crate) struct LiveTransport {
    http: reqwest::Client,
    endpoint: url::Url,
    /// `GET /v2/notifications` (lookup by reference).
    list: url::Url,
    signer: TokenSigner,
    callback_url: Option<String>,
}

impl LiveTransport {
    pub(crate) fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: &ApiKey,
        callback_url: Option<String>,
    ) -> Result<Self, NotifyInitError> {
        let mut base =
            url::Url::parse(base_url).map_err(|e| NotifyInitError(format!("notify.base_url: not a URL ({e})")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(NotifyInitError("notify.base_url: must be an http(s) URL".to_owned()));
        }
        // `Url::join` replaces the last path segment unless the base ends in `/`; a base with a path prefix
        // (a proxy mount point) must keep it.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let join = |path: &str| {
            base.join(path).map_err(|e| NotifyInitError(format!("notify.base_url: cannot append the API path ({e})")))
        };
        let (endpoint, list) = (join("v2/notifications/email")?, join("v2/notifications")?);
        Ok(Self { http, endpoint, list, signer: TokenSigner::new(api_key), callback_url })
    }

    fn token(&self) -> Result<String, NotifyError> {
        self.signer.sign_now().map_err(|err| {
            // HS256 over two fields cannot fail short of a bug; don't let a retry loop spin on it.
            tracing::error!(error = %err, "could not sign the VA Notify JWT");
            NotifyError { class: ErrorClass::Final, http_status: None, error: "jwt_signing" }
        })
    }

    /// VA's ids of the notifications it holds with this `reference` (`GET /v2/notifications?reference=`),
    /// bounded by `timeout`. An unreadable 2xx is a retryable failure: nobody may send on a lookup
    /// that could not be read.
    pub(crate) async fn find(&self, reference: Uuid, timeout: std::time::Duration) -> Result<Vec<Uuid>, NotifyError> {
        let mut url = self.list.clone();
        url.query_pairs_mut().append_pair("reference", &reference.to_string());
        let response = self.http.get(url).bearer_auth(self.token()?).timeout(timeout).send().await.map_err(|err| {
            tracing::debug!(error = %err, "VA Notify lookup failed before a response");
            classify_transport(&err)
        })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await;
        if (200..300).contains(&status) {
            return bytes.ok().as_deref().and_then(parse_list).ok_or(NotifyError {
                class: ErrorClass::Retryable,
                http_status: Some(status),
                error: "invalid_response",
            });
        }
        Err(classify_failure(status, bytes.as_deref().unwrap_or_default()))
    }

    /// Makes the call once. No retries here: the outbox worker owns retry timing.
    pub(crate) async fn post(&self, email: &EmailRequest<'_>) -> Result<SentNotification, NotifyError> {
        let token = self.token()?;
        let body = EmailBody {
            template_id: email.template_id,
            recipient_identifier: RecipientIdentifier { id_type: "PID", id_value: email.participant_id },
            personalisation: Personalisation { host: email.host, first_name: email.first_name },
            reference: email.reference,
            callback_url: self.callback_url.as_deref(),
        };
        let response =
            self.http.post(self.endpoint.clone()).bearer_auth(token).json(&body).send().await.map_err(|err| {
                // The cause (DNS, TLS, reset, ...) is only here; the returned label is deliberately coarse.
                tracing::debug!(error = %err, "VA Notify request failed before a response");
                classify_transport(&err)
            })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await;

        if (200..300).contains(&status) {
            return match bytes.ok().as_deref().and_then(parse_created) {
                Some(id) => Ok(SentNotification { id }),
                // VA accepted the mail but we cannot read its id. Retrying would email the Veteran twice,
                // so this is final; the row's `reference` still lets callbacks find it.
                None => {
                    Err(NotifyError { class: ErrorClass::Final, http_status: Some(status), error: "invalid_response" })
                }
            };
        }
        // The status alone classifies a failure if its body cannot be read.
        Err(classify_failure(status, bytes.as_deref().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(base_url: &str) -> Result<LiveTransport, NotifyInitError> {
        let key = ApiKey::parse("ebg-6f1e4bd2-3a2c-4b7e-9c1d-2f6a8e0b7c55-bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb")?;
        LiveTransport::new(reqwest::Client::new(), base_url, &key, None)
    }

    #[test]
    fn endpoint_keeps_any_base_path() {
        let endpoint = |base: &str| transport(base).map(|t| t.endpoint.to_string()).unwrap();
        assert_eq!(
            endpoint("https://api.notifications.va.gov"),
            "https://api.notifications.va.gov/v2/notifications/email"
        );
        assert_eq!(
            endpoint("https://api.notifications.va.gov/"),
            "https://api.notifications.va.gov/v2/notifications/email"
        );
        assert_eq!(endpoint("http://127.0.0.1:9/proxy/va"), "http://127.0.0.1:9/proxy/va/v2/notifications/email");
    }

    #[test]
    fn rejects_non_http_base_urls() {
        assert!(transport("not a url").is_err());
        assert!(transport("ftp://example.com").is_err());
    }
}
