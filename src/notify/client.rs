//! One HTTP call to VA Notify's `POST /v2/notifications/{email,sms,push}` (SPEC §6, CHANNELS.md §3). Rate
//! limiting and the breaker sit around it in [`super::NotifyClient`].
//!
//! The three channels share one request path: sign a fresh JWT, post the channel's body, classify the answer.
//! Only the body and the reading of a 2xx differ, and both are chosen by [`Channel`].

use serde::Serialize;
use uuid::Uuid;

use super::api_key::ApiKey;
use super::classify::{classify_failure, classify_transport, parse_created, parse_list, parse_push_success};
use super::jwt::TokenSigner;
use super::{
    Channel, EmailRequest, ErrorClass, NotifyError, NotifyInitError, PushAccepted, PushRequest, SentNotification,
    SmsRequest,
};

/// The only mobile app EBG sends push notifications to.
const MOBILE_APP: &str = "VA_FLAGSHIP_APP";

/// The email body. VA's schemas set `additionalProperties: false`, so each body struct is the whole list of
/// keys we may send; optional keys are left out entirely (not `null`) when not configured.
#[derive(Serialize)]
struct EmailBody<'a> {
    template_id: Uuid,
    recipient_identifier: RecipientIdentifier<'a>,
    personalisation: EmailPersonalisation<'a>,
    reference: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<&'a str>,
}

#[derive(Serialize)]
struct SmsBody<'a> {
    template_id: Uuid,
    recipient_identifier: RecipientIdentifier<'a>,
    personalisation: HostPersonalisation<'a>,
    reference: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sms_sender_id: Option<Uuid>,
}

/// The push schema has no `reference` and no `callback_url`: push has no callbacks.
#[derive(Serialize)]
struct PushBody<'a> {
    mobile_app: &'static str,
    template_id: &'a str,
    recipient_identifier: RecipientIdentifier<'a>,
    personalisation: NoPersonalisation,
}

#[derive(Serialize)]
struct RecipientIdentifier<'a> {
    id_type: &'static str,
    id_value: &'a str,
}

#[derive(Serialize)]
struct EmailPersonalisation<'a> {
    host: &'a str,
    first_name: &'a str,
}

#[derive(Serialize)]
struct HostPersonalisation<'a> {
    host: &'a str,
}

/// Serialises as `{}`.
#[derive(Serialize)]
struct NoPersonalisation {}

/// Talks to a live VA Notify with one API key.
pub(crate) struct LiveTransport {
    http: reqwest::Client,
    base: url::Url,
    /// `GET /v2/notifications` (lookup by reference).
    list: url::Url,
    signer: TokenSigner,
    callback_url: Option<String>,
    sms_sender_id: Option<Uuid>,
}

impl LiveTransport {
    pub(crate) fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: &ApiKey,
        callback_url: Option<String>,
        sms_sender_id: Option<Uuid>,
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
        for channel in [Channel::Email, Channel::Sms, Channel::Push] {
            endpoint(&base, channel)?;
        }
        let list = base
            .join("v2/notifications")
            .map_err(|e| NotifyInitError(format!("notify.base_url: cannot append the API path ({e})")))?;
        Ok(Self { http, base, list, signer: TokenSigner::new(api_key), callback_url, sms_sender_id })
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

    /// Sends one email once. No retries here: the outbox worker owns retry timing.
    pub(crate) async fn post_email(&self, email: &EmailRequest<'_>) -> Result<SentNotification, NotifyError> {
        let body = EmailBody {
            template_id: email.template_id,
            recipient_identifier: RecipientIdentifier { id_type: "PID", id_value: email.participant_id },
            personalisation: EmailPersonalisation { host: email.host, first_name: email.first_name },
            reference: email.reference,
            callback_url: self.callback_url.as_deref(),
        };
        let (status, bytes) = self.post(Channel::Email, &body).await?;
        created_id(status, &bytes)
    }

    /// Sends one SMS once. VA Notify finds the mobile number from the participant id (VA Profile).
    pub(crate) async fn post_sms(&self, sms: &SmsRequest<'_>) -> Result<SentNotification, NotifyError> {
        let body = SmsBody {
            template_id: sms.template_id,
            recipient_identifier: RecipientIdentifier { id_type: "PID", id_value: sms.participant_id },
            personalisation: HostPersonalisation { host: sms.host },
            reference: sms.reference,
            callback_url: self.callback_url.as_deref(),
            sms_sender_id: self.sms_sender_id,
        };
        let (status, bytes) = self.post(Channel::Sms, &body).await?;
        created_id(status, &bytes)
    }

    /// Sends one push notification once, to the Veteran's ICN.
    pub(crate) async fn post_push(&self, push: &PushRequest<'_>) -> Result<PushAccepted, NotifyError> {
        let body = PushBody {
            mobile_app: MOBILE_APP,
            template_id: push.template_id,
            recipient_identifier: RecipientIdentifier { id_type: "ICN", id_value: push.icn },
            personalisation: NoPersonalisation {},
        };
        let (status, bytes) = self.post(Channel::Push, &body).await?;
        if parse_push_success(&bytes) {
            Ok(PushAccepted)
        } else {
            // As for an unreadable email 201: VA may have pushed, so a retry could push twice.
            Err(NotifyError { class: ErrorClass::Final, http_status: Some(status), error: "invalid_response" })
        }
    }

    /// Posts `body` to the channel's endpoint with a fresh JWT. `Ok` is a 2xx status with its body; every
    /// other answer is classified into an error here.
    async fn post(&self, channel: Channel, body: &impl Serialize) -> Result<(u16, Vec<u8>), NotifyError> {
        let token = self.token()?;
        let endpoint = endpoint(&self.base, channel).map_err(|_| NotifyError {
            class: ErrorClass::Final,
            http_status: None,
            error: "invalid_endpoint",
        })?;
        let response = self.http.post(endpoint).bearer_auth(token).json(body).send().await.map_err(|err| {
            // The cause (DNS, TLS, reset, ...) is only here; the returned label is deliberately coarse.
            tracing::debug!(error = %err, "VA Notify request failed before a response");
            classify_transport(&err)
        })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await;
        if (200..300).contains(&status) {
            return Ok((status, bytes.map(|b| b.to_vec()).unwrap_or_default()));
        }
        // The status alone classifies a failure if its body cannot be read.
        Err(classify_failure(status, bytes.as_deref().unwrap_or_default()))
    }
}

/// `v2/notifications/{email,sms,push}` below the base URL.
fn endpoint(base: &url::Url, channel: Channel) -> Result<url::Url, NotifyInitError> {
    base.join(&format!("v2/notifications/{}", channel.as_str()))
        .map_err(|e| NotifyInitError(format!("notify.base_url: cannot append the API path ({e})")))
}

/// The id of an email or SMS 2xx.
fn created_id(status: u16, bytes: &[u8]) -> Result<SentNotification, NotifyError> {
    match parse_created(bytes) {
        Some(id) => Ok(SentNotification { id }),
        // VA accepted the notification but we cannot read its id. Retrying would notify the Veteran twice,
        // so this is final; the row's `reference` still lets callbacks find it.
        None => Err(NotifyError { class: ErrorClass::Final, http_status: Some(status), error: "invalid_response" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(base_url: &str) -> Result<LiveTransport, NotifyInitError> {
        let key = ApiKey::parse("ebg-6f1e4bd2-3a2c-4b7e-9c1d-2f6a8e0b7c55-bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb")?;
        LiveTransport::new(reqwest::Client::new(), base_url, &key, None, None)
    }

    #[test]
    fn endpoint_keeps_any_base_path() {
        let endpoint = |base: &str, channel| endpoint(&transport(base).unwrap().base, channel).unwrap().to_string();
        assert_eq!(
            endpoint("https://api.notifications.va.gov", Channel::Email),
            "https://api.notifications.va.gov/v2/notifications/email"
        );
        assert_eq!(
            endpoint("https://api.notifications.va.gov/", Channel::Sms),
            "https://api.notifications.va.gov/v2/notifications/sms"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:9/proxy/va", Channel::Push),
            "http://127.0.0.1:9/proxy/va/v2/notifications/push"
        );
    }

    #[test]
    fn list_endpoint_keeps_any_base_path() {
        let list = |base: &str| transport(base).map(|t| t.list.to_string()).unwrap();
        assert_eq!(list("https://api.notifications.va.gov"), "https://api.notifications.va.gov/v2/notifications");
        assert_eq!(list("http://127.0.0.1:9/proxy/va/"), "http://127.0.0.1:9/proxy/va/v2/notifications");
    }

    #[test]
    fn rejects_non_http_base_urls() {
        assert!(transport("not a url").is_err());
        assert!(transport("ftp://example.com").is_err());
    }

    #[test]
    fn push_personalisation_is_an_empty_object() {
        let body = PushBody {
            mobile_app: MOBILE_APP,
            template_id: "vetext-template-1",
            recipient_identifier: RecipientIdentifier { id_type: "ICN", id_value: "1012345678V123456" },
            personalisation: NoPersonalisation {},
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["personalisation"], serde_json::json!({}));
        assert_eq!(json.as_object().unwrap().len(), 4);
    }
}
