//! `NotifyClient` against the fake VA Notify over real HTTP on 127.0.0.1 (SPEC §6).

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use ebg_notify::config::{NotifyConfig, NotifyMode, Secret};
use ebg_notify::notify::{BreakerState, EmailRequest, ErrorClass, NotifyClient, SandboxCallback};
use ebg_testkit::FakeVaNotify;
use ebg_testkit::va_notify::Reply;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

const PARTICIPANT: &str = "600043201";
const FIRST_NAME: &str = "Jane";
const HOST: &str = "www.va.gov";

pub(crate) fn live_config(fake: &FakeVaNotify) -> NotifyConfig {
    NotifyConfig {
        mode: NotifyMode::Live,
        base_url: fake.base_url(),
        api_key: Secret::new(fake.api_key()),
        // High enough that the limiter never shapes tests that are not about it.
        rate_per_minute: 1_000_000,
        push_api_key: Secret::new(fake.push_api_key()),
        push_rate_per_minute: 1_000_000,
        sms_sender_id: String::new(),
        hostname: "api.va.gov".to_owned(),
        callback_url: String::new(),
        callback_token: Secret::default(),
        timeout_ms: 2_000,
        connect_timeout_ms: 1_000,
        lookup_timeout_ms: 1_000,
        breaker_failure_threshold: 100,
        breaker_open_seconds: 30,
        sandbox_delivery_delay_ms: 0,
    }
}

pub(crate) fn client(cfg: &NotifyConfig) -> NotifyClient {
    NotifyClient::from_config(cfg, None).expect("client builds")
}

fn email(template_id: Uuid, reference: Uuid) -> EmailRequest<'static> {
    EmailRequest { template_id, participant_id: PARTICIPANT, first_name: FIRST_NAME, host: HOST, reference }
}

#[tokio::test]
async fn sends_exactly_the_va_payload_with_an_accepted_jwt() {
    let fake = FakeVaNotify::start().await;
    let (template_id, reference) = (Uuid::new_v4(), Uuid::new_v4());

    let sent = client(&live_config(&fake)).send_email(&email(template_id, reference)).await.unwrap();

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].auth_ok, "the fake verifies the JWT as VA does");
    assert_eq!(
        requests[0].body,
        Some(json!({
            "template_id": template_id.to_string(),
            "recipient_identifier": {"id_type": "PID", "id_value": PARTICIPANT},
            "personalisation": {"host": HOST, "first_name": FIRST_NAME},
            "reference": reference.to_string(),
        })),
        "no other keys: VA rejects unknown ones"
    );
    assert_eq!(fake.accepted_references(), [reference.to_string()]);
    assert!(!sent.id.is_nil());
}

#[tokio::test]
async fn callback_url_is_sent_only_when_configured() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.callback_url = "https://api.va.gov/va_notify/callbacks".to_owned();

    client(&cfg).send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await.unwrap();

    let body = fake.requests()[0].body.clone().unwrap();
    assert_eq!(body["callback_url"], "https://api.va.gov/va_notify/callbacks");
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
}

#[tokio::test]
async fn keys_with_86_char_secrets_work() {
    // token_urlsafe(64) output: 86 chars, `-` and `_` included.
    let secret = format!("{}-_{}", "a1B2c3D4e5".repeat(4), "Z9y8X7w6v5".repeat(4) + "QRST");
    assert_eq!(secret.len(), 86);
    let fake = FakeVaNotify::start_with(Uuid::new_v4(), secret).await;

    let result = client(&live_config(&fake)).send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await;

    assert!(result.is_ok(), "{result:?}");
    assert!(fake.requests()[0].auth_ok);
}

#[tokio::test]
async fn a_wrong_secret_is_a_final_auth_error() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.api_key = Secret::new(format!("test-key-{}-{}", fake.service_id(), Uuid::new_v4()));

    let err = client(&cfg).send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await.unwrap_err();

    assert_eq!((err.class, err.http_status, err.error), (ErrorClass::Final, Some(403), "AuthError"));
    assert!(!fake.requests()[0].auth_ok);
}

#[tokio::test]
async fn each_va_error_maps_to_its_class() {
    let fake = FakeVaNotify::start().await;
    let cases = [
        (Reply::Status500, ErrorClass::Retryable, 500, "http_500"),
        (Reply::BadGateway, ErrorClass::Retryable, 502, "http_502"),
        (Reply::ServiceUnavailable, ErrorClass::Retryable, 503, "http_503"),
        (Reply::GatewayTimeout, ErrorClass::Retryable, 504, "http_504"),
        (Reply::RateLimit, ErrorClass::Retryable, 429, "RateLimitError"),
        (Reply::DailyLimit, ErrorClass::DailyLimit, 429, "TooManyRequestsError"),
        (Reply::BadRequest, ErrorClass::Final, 400, "BadRequestError"),
        (Reply::Forbidden, ErrorClass::Final, 403, "AuthError"),
        (Reply::NotFound, ErrorClass::Final, 404, "NoResultFound"),
    ];
    fake.script(cases.iter().map(|(reply, ..)| reply.clone()));
    let notify = client(&live_config(&fake));

    for (reply, class, status, label) in cases {
        let err = notify.send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await.unwrap_err();
        assert_eq!((err.class, err.http_status, err.error), (class, Some(status), label), "{reply:?}");
    }
    // The script is used up; the next call succeeds.
    assert!(notify.send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await.is_ok());
}

#[tokio::test]
async fn a_timeout_is_retryable_and_the_retry_keeps_the_reference() {
    let fake = FakeVaNotify::start().await;
    fake.script([Reply::Timeout(Duration::from_secs(2))]);
    let mut cfg = live_config(&fake);
    cfg.timeout_ms = 200;
    let notify = client(&cfg);
    let reference = Uuid::new_v4();

    let err = notify.send_email(&email(Uuid::new_v4(), reference)).await.unwrap_err();
    assert_eq!((err.class, err.http_status, err.error), (ErrorClass::Retryable, None, "timeout"));

    notify.send_email(&email(Uuid::new_v4(), reference)).await.unwrap();
    // The timed-out call may still have been created upstream; both carry our id for reconciliation.
    assert_eq!(fake.accepted_references(), [reference.to_string(), reference.to_string()]);
}

#[tokio::test]
async fn a_connection_refused_is_retryable_connect() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    cfg.base_url = format!("http://127.0.0.1:{closed_port}");

    let err = client(&cfg).send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await.unwrap_err();

    assert_eq!((err.class, err.http_status, err.error), (ErrorClass::Retryable, None, "connect"));
}

#[tokio::test]
async fn breaker_opens_after_consecutive_failures_and_recovers_after_a_trial() {
    let fake = FakeVaNotify::start().await;
    fake.script([Reply::Status500, Reply::BadGateway, Reply::RateLimit]);
    let mut cfg = live_config(&fake);
    cfg.breaker_failure_threshold = 3;
    cfg.breaker_open_seconds = 1;
    let notify = client(&cfg);

    for _ in 0..3 {
        let err = notify.send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Retryable);
    }
    assert_eq!(notify.breaker_state(), BreakerState::Open);
    for _ in 0..5 {
        let err = notify.clone().send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::CircuitOpen);
    }
    assert_eq!(fake.requests().len(), 3, "no request reaches VA Notify while the breaker is open");

    tokio::time::sleep(Duration::from_millis(1_050)).await;
    assert_eq!(notify.breaker_state(), BreakerState::HalfOpen);
    notify.send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await.unwrap();
    assert_eq!(notify.breaker_state(), BreakerState::Closed);
    assert_eq!(fake.requests().len(), 4);
}

#[tokio::test]
async fn rate_limiter_is_shared_by_clones_and_spaces_calls() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    // 120/min: one permit every 500 ms, burst of one.
    cfg.rate_per_minute = 120;
    let notify = client(&cfg);

    let started = Instant::now();
    let calls = (0..4).map(|_| {
        let notify = notify.clone();
        tokio::spawn(async move { notify.send_email(&email(Uuid::new_v4(), Uuid::new_v4())).await.map(|s| s.id) })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
    let elapsed = started.elapsed();

    // First call at once, then 0.5 s, 1.0 s, 1.5 s.
    assert!(elapsed >= Duration::from_millis(1_400), "calls were not spaced: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(2_500), "limiter too slow: {elapsed:?}");
    assert_eq!(fake.accepted().len(), 4);
}

pub(crate) type Received = (Option<String>, Value);

pub(crate) async fn callback_receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel::<Received>();
    let app = axum::Router::new()
        .route(
            "/va_notify/callbacks",
            post(|State(tx): State<mpsc::UnboundedSender<Received>>, headers: HeaderMap, Json(body): Json<Value>| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let _ = tx.send((auth, body));
                Json(json!({"message": "Status updated"}))
            }),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/va_notify/callbacks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

#[tokio::test]
async fn sandbox_posts_a_va_shaped_delivered_callback() {
    let (url, mut received) = callback_receiver().await;
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.mode = NotifyMode::Sandbox;
    cfg.api_key = Secret::default();
    cfg.sandbox_delivery_delay_ms = 50;
    let notify = NotifyClient::from_config(&cfg, Some(SandboxCallback { url, bearer_token: "cb-token".to_owned() }))
        .expect("sandbox needs no API key");
    let reference = Uuid::new_v4();

    let sent = notify.send_email(&email(Uuid::new_v4(), reference)).await.unwrap();

    let (auth, body) = tokio::time::timeout(Duration::from_secs(2), received.recv()).await.unwrap().unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer cb-token"));
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = [
        "id",
        "reference",
        "to",
        "status",
        "status_reason",
        "created_at",
        "completed_at",
        "sent_at",
        "notification_type",
        "provider",
    ];
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys_sorted, expected);
    assert_eq!(body["id"], sent.id.to_string());
    assert_eq!(body["reference"], reference.to_string());
    assert_eq!(body["to"], Value::Null);
    assert_eq!(body["status"], "delivered");
    assert_eq!(body["status_reason"], Value::Null);
    assert_eq!(body["notification_type"], "email");
    assert_eq!(body["provider"], "sandbox");
    for field in ["created_at", "completed_at", "sent_at"] {
        let text = body[field].as_str().unwrap();
        // RFC 3339, UTC, microseconds: 2025-01-02T03:04:05.000006Z
        assert_eq!((text.len(), text.ends_with('Z'), &text[19..20]), (27, true, "."), "{field}: {text}");
        chrono::DateTime::parse_from_rfc3339(text).unwrap();
    }
    assert!(fake.requests().is_empty(), "sandbox mode never calls VA Notify");
    assert_eq!(notify.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn live_mode_refuses_a_malformed_key_without_echoing_it() {
    let fake = FakeVaNotify::start().await;
    let mut cfg = live_config(&fake);
    cfg.api_key = Secret::new("name-not-a-uuid-at-all-s3cr3t-value");

    let err = NotifyClient::from_config(&cfg, None).err().expect("malformed key is refused");

    assert!(err.to_string().contains("notify.api_key"), "{err}");
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
}

#[tokio::test]
async fn lookup_by_reference_finds_what_va_notify_holds() {
    let fake = FakeVaNotify::start().await;
    let notify = client(&live_config(&fake));
    let reference = Uuid::new_v4();
    assert!(notify.find_by_reference(reference).await.unwrap().is_empty(), "an unknown reference lists nothing");
    let sent = notify.send_email(&email(Uuid::new_v4(), reference)).await.unwrap();
    assert_eq!(notify.find_by_reference(reference).await.unwrap(), vec![sent.id]);
    assert!(notify.find_by_reference(Uuid::new_v4()).await.unwrap().is_empty());

    // A failed lookup is an error (the worker retries it later), never an empty answer.
    fake.script_lookups([Reply::Status500]);
    let failed = notify.find_by_reference(reference).await.unwrap_err();
    assert_eq!(failed.http_status, Some(500));
    fake.set_latency(Duration::from_millis(1_500));
    let slow = notify.find_by_reference(reference).await.unwrap_err();
    assert_eq!(slow.error, "timeout", "bounded by notify.lookup_timeout_ms");
    assert_eq!(fake.lookups_total(), 5);
}
