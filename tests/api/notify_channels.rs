//! `NotifyClient::send_sms` and `send_push` against the fake VA Notify's SMS and push endpoints, whose
//! schemas and keys are VA's (CHANNELS.md §3).

use std::time::Duration;

use ebg_notify::config::{NotifyMode, Secret};
use ebg_notify::notify::{
    BreakerState, EmailRequest, ErrorClass, NotifyClient, PushAccepted, PushRequest, SandboxCallback, SmsRequest,
};
use ebg_testkit::FakeVaNotify;
use ebg_testkit::va_notify::{Endpoint, Reply};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::notify_client::{callback_receiver, client, live_config};

const PARTICIPANT: &str = "600043201";
const ICN: &str = "1012345678V123456";
const HOST: &str = "www.va.gov";
const PUSH_TEMPLATE: &str = "0EF7C8C9-A2D8-4DF2-AB0A-D7D5D9F5E3A1-vetext";

fn sms(template_id: Uuid, reference: Uuid) -> SmsRequest<'static> {
    SmsRequest { template_id, participant_id: PARTICIPANT, host: HOST, reference }
}

fn push() -> PushRequest<'static> {
    PushRequest { template_id: PUSH_TEMPLATE, icn: ICN }
}

#[tokio::test]
async fn sms_sends_exactly_vas_keys_with_the_email_key() {
    let fake = FakeVaNotify::start().await;
    let (template_id, reference) = (Uuid::new_v4(), Uuid::new_v4());

    let sent = client(&live_config(&fake)).send_sms(&sms(template_id, reference)).await.unwrap();

    let requests = fake.requests_to(Endpoint::Sms);
    assert_eq!(requests.len(), 1);
    assert!(requests[0].auth_ok);
    assert_eq!(
        requests[0].body,
        Some(json!({
            "template_id": template_id.to_string(),
            "recipient_identifier": {"id_type": "PID", "id_value": PARTICIPANT},
            "personalisation": {"host": HOST},
            "reference": reference.to_string(),
        }))
    );
    assert!(!sent.id.is_nil());
}

#[tokio::test]
async fn sms_carries_the_callback_url_and_sender_id_when_configured() {
    let fake = FakeVaNotify::start().await;
    let sender = Uuid::new_v4();
    let mut cfg = live_config(&fake);
    cfg.callback_url = "https://api.va.gov/va_notify/callbacks".to_owned();
    cfg.sms_sender_id = sender.to_string();

    client(&cfg).send_sms(&sms(Uuid::new_v4(), Uuid::new_v4())).await.unwrap();

    let body = fake.requests_to(Endpoint::Sms)[0].body.clone().unwrap();
    assert_eq!(body["callback_url"], "https://api.va.gov/va_notify/callbacks");
    assert_eq!(body["sms_sender_id"], sender.to_string());
    assert_eq!(body.as_object().unwrap().len(), 6);
    assert_eq!(fake.accepted().len(), 1, "VA's SMS schema accepted it");
}

#[tokio::test]
async fn a_malformed_sms_sender_id_is_refused_at_startup() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.sms_sender_id = "not-a-uuid".to_owned();
    let err = NotifyClient::from_config(&cfg, None).err().expect("refused");
    assert!(err.to_string().contains("notify.sms_sender_id"), "{err}");
}

#[tokio::test]
async fn push_sends_exactly_vas_keys_with_the_push_key_and_has_no_id() {
    let fake = FakeVaNotify::start().await;

    let accepted = client(&live_config(&fake)).send_push(&push()).await;

    assert_eq!(accepted.unwrap(), PushAccepted);
    let requests = fake.requests_to(Endpoint::Push);
    assert_eq!(requests.len(), 1);
    assert!(requests[0].auth_ok, "signed with the push key");
    assert_eq!(
        requests[0].body,
        Some(json!({
            "mobile_app": "VA_FLAGSHIP_APP",
            "template_id": PUSH_TEMPLATE,
            "recipient_identifier": {"id_type": "ICN", "id_value": ICN},
            "personalisation": {},
        })),
        "no reference, no callback_url: the push schema refuses them"
    );
    assert_eq!(requests[0].status, 201);
}

#[tokio::test]
async fn push_is_not_sent_with_a_callback_url_even_when_one_is_configured() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.callback_url = "https://api.va.gov/va_notify/callbacks".to_owned();
    assert_eq!(client(&cfg).send_push(&push()).await.unwrap(), PushAccepted);
    assert!(fake.requests_to(Endpoint::Push)[0].body.as_ref().unwrap().get("callback_url").is_none());
}

#[tokio::test]
async fn the_push_and_email_keys_are_not_interchangeable() {
    let fake = FakeVaNotify::start().await;
    let mut swapped = live_config(&fake);
    swapped.api_key = Secret::new(fake.push_api_key());
    swapped.push_api_key = Secret::new(fake.api_key());
    let notify = client(&swapped);

    let push_err = notify.send_push(&push()).await.unwrap_err();
    let email = EmailRequest {
        template_id: Uuid::new_v4(),
        participant_id: PARTICIPANT,
        first_name: "Jane",
        host: HOST,
        reference: Uuid::new_v4(),
    };
    let email_err = notify.send_email(&email).await.unwrap_err();
    let sms_err = notify.send_sms(&sms(Uuid::new_v4(), Uuid::new_v4())).await.unwrap_err();

    for err in [push_err, email_err, sms_err] {
        assert_eq!((err.class, err.http_status, err.error), (ErrorClass::Final, Some(403), "AuthError"));
    }
    assert!(fake.requests().iter().all(|r| !r.auth_ok));
}

#[tokio::test]
async fn push_errors_classify_as_va_means_them() {
    let fake = FakeVaNotify::start().await;
    fake.script([Reply::PushNotAllowed, Reply::Impaired]);
    let notify = client(&live_config(&fake));

    let not_allowed = notify.send_push(&push()).await.unwrap_err();
    assert_eq!(
        (not_allowed.class, not_allowed.http_status, not_allowed.error),
        (ErrorClass::Final, Some(403), "BadRequestError")
    );
    let impaired = notify.send_push(&push()).await.unwrap_err();
    assert_eq!((impaired.class, impaired.http_status, impaired.error), (ErrorClass::Retryable, Some(503), "http_503"));
    assert_eq!(notify.send_push(&push()).await.unwrap(), PushAccepted, "and recovers");
}

#[tokio::test]
async fn without_a_push_key_push_fails_final_and_calls_nothing() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.push_api_key = Secret::default();
    let err = client(&cfg).send_push(&push()).await.unwrap_err();
    assert_eq!((err.class, err.http_status, err.error), (ErrorClass::Final, None, "push_not_configured"));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_malformed_push_key_is_refused_naming_its_setting() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.push_api_key = Secret::new("push-not-a-uuid-s3cr3t");
    let err = NotifyClient::from_config(&cfg, None).err().expect("refused").to_string();
    assert!(err.contains("notify.push_api_key") && !err.contains("s3cr3t"), "{err}");
}

#[tokio::test]
async fn push_has_its_own_breaker() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.breaker_failure_threshold = 2;
    let notify = client(&cfg);
    fake.script([Reply::Status500, Reply::Status500]);

    for _ in 0..2 {
        assert_eq!(
            notify.send_sms(&sms(Uuid::new_v4(), Uuid::new_v4())).await.unwrap_err().class,
            ErrorClass::Retryable
        );
    }
    assert_eq!(notify.breaker_state(), BreakerState::Open);
    let sms_err = notify.send_sms(&sms(Uuid::new_v4(), Uuid::new_v4())).await.unwrap_err();
    assert_eq!(sms_err.class, ErrorClass::CircuitOpen, "SMS shares the email breaker");

    assert_eq!(notify.send_push(&push()).await.unwrap(), PushAccepted, "push is not held by the email breaker");
    assert_eq!(notify.push_breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn sandbox_sms_reports_an_sms_callback_and_sandbox_push_succeeds() {
    let (url, mut received) = callback_receiver().await;
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.mode = NotifyMode::Sandbox;
    cfg.api_key = Secret::default();
    cfg.push_api_key = Secret::default();
    cfg.sandbox_delivery_delay_ms = 10;
    let notify = NotifyClient::from_config(&cfg, Some(SandboxCallback { url, bearer_token: "cb".to_owned() })).unwrap();
    let reference = Uuid::new_v4();

    let sent = notify.send_sms(&sms(Uuid::new_v4(), reference)).await.unwrap();
    assert_eq!(notify.send_push(&push()).await.unwrap(), PushAccepted);

    let (_, body) = tokio::time::timeout(Duration::from_secs(2), received.recv()).await.unwrap().unwrap();
    assert_eq!(
        (body["id"].as_str(), body["reference"].as_str()),
        (Some(&*sent.id.to_string()), Some(&*reference.to_string()))
    );
    assert_eq!(body["notification_type"], "sms");
    assert!(tokio::time::timeout(Duration::from_millis(200), received.recv()).await.is_err(), "push gets no callback");
    assert!(fake.requests().is_empty());
}

/// A VA-valid token for the fake's push service, or for its email/SMS service.
fn token(service_id: Uuid, secret: &str) -> String {
    let claims = json!({"iss": service_id.to_string(), "iat": chrono::Utc::now().timestamp()});
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

async fn post_raw(fake: &FakeVaNotify, path: &str, key: &str, body: Value) -> (u16, Value) {
    // `{name}-{service_id}-{secret}` with a UUID secret: the last 73 characters are the id and the secret.
    let (service_id, secret) = key[key.len() - 73..].split_at(36);
    let response = reqwest::Client::new()
        .post(format!("{}{path}", fake.base_url()))
        .bearer_auth(token(Uuid::parse_str(service_id).unwrap(), &secret[1..]))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_fakes_schemas_refuse_what_va_refuses() {
    let fake = FakeVaNotify::start().await;
    let (push_key, key) = (fake.push_api_key(), fake.api_key());
    let good_push = json!({
        "mobile_app": "VA_FLAGSHIP_APP", "template_id": PUSH_TEMPLATE,
        "recipient_identifier": {"id_type": "ICN", "id_value": ICN}, "personalisation": {},
    });
    let good_sms = json!({
        "template_id": Uuid::new_v4().to_string(),
        "recipient_identifier": {"id_type": "PID", "id_value": PARTICIPANT},
        "personalisation": {"host": HOST}, "reference": Uuid::new_v4().to_string(),
    });
    let with = |base: &Value, key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    assert_eq!(post_raw(&fake, "/v2/notifications/push", &push_key, good_push.clone()).await.0, 201);
    assert_eq!(post_raw(&fake, "/v2/notifications/sms", &key, good_sms.clone()).await.0, 201);

    let refused = [
        ("/v2/notifications/push", &push_key, with(&good_push, "callback_url", json!("https://api.va.gov/cb"))),
        ("/v2/notifications/push", &push_key, with(&good_push, "reference", json!(Uuid::new_v4().to_string()))),
        ("/v2/notifications/push", &push_key, with(&good_push, "unknown", json!(1))),
        (
            "/v2/notifications/push",
            &push_key,
            with(&good_push, "recipient_identifier", json!({"id_type": "PID", "id_value": PARTICIPANT})),
        ),
        ("/v2/notifications/push", &push_key, with(&good_push, "mobile_app", json!("OTHER_APP"))),
        ("/v2/notifications/sms", &key, with(&good_sms, "email_reply_to_id", json!(Uuid::new_v4().to_string()))),
        ("/v2/notifications/sms", &key, with(&good_sms, "sms_sender_id", json!("not-a-uuid"))),
        ("/v2/notifications/sms", &key, with(&good_sms, "template_id", json!("vetext-template"))),
    ];
    for (path, key, body) in refused {
        let (status, answer) = post_raw(&fake, path, key, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}");
        assert_eq!(answer["errors"][0]["error"], "ValidationError", "{answer}");
    }

    let (status, answer) = post_raw(&fake, "/v2/notifications/push", &key, good_push).await;
    assert_eq!((status, answer["errors"][0]["error"].as_str()), (403, Some("AuthError")), "push checks the push key");
    let (status, _) = post_raw(&fake, "/v2/notifications/sms", &push_key, good_sms).await;
    assert_eq!(status, 403, "SMS checks the service's key");
}
