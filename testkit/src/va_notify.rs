//! A fake VA Notify `POST /v2/notifications/{email,sms,push}` (SPEC §6, CHANNELS.md §3) on a loopback port.
//!
//! It checks what VA checks (the per-request JWT, each JSON schema with `additionalProperties: false`),
//! answers in VA's shapes, can be scripted to fail, and records every request for assertions. Email and SMS
//! authenticate with the service's key; push with a separate push key, as VA issues one.
//!
//! Every email and SMS it creates is kept, so `GET /v2/notifications?reference=` (VA's list endpoint,
//! `{"notifications":[...],"links":{...}}`) finds it — including one created for a client that hung up
//! before the 201 arrived, as VA would. Pushes have no id and are not listed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// VA accepts a token whose `iat` is within this many seconds of its clock, either side.
pub const JWT_WINDOW_SECONDS: i64 = 30;

/// What the fake answers to a request that passed auth and validation. Scripted replies are used in
/// order; once the script is empty every request gets [`Reply::Created`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 201 with VA's response body.
    Created,
    /// 500 with VA's odd body `{"result":"error","message":"Internal server error"}`.
    Status500,
    /// 502 with a non-JSON gateway page.
    BadGateway,
    /// 503 with a non-JSON gateway page.
    ServiceUnavailable,
    /// 504 with a non-JSON gateway page.
    GatewayTimeout,
    /// 429 `RateLimitError` (the per-minute limit).
    RateLimit,
    /// 429 `TooManyRequestsError` (the daily limit).
    DailyLimit,
    /// 400 `BadRequestError`.
    BadRequest,
    /// 403 `AuthError`, even though the token was valid (e.g. a revoked key).
    Forbidden,
    /// 404 `NoResultFound`.
    NotFound,
    /// 403 `BadRequestError` "Service is not allowed to send push notifications" (push without permission).
    PushNotAllowed,
    /// 503 with VA's JSON body `{"result":"error","message":"VA Notify service impaired, please try again"}`.
    Impaired,
    /// Holds the request this long, then answers 201: like VA creating the notification after the
    /// client has given up, which is why the record counts it as accepted.
    Timeout(Duration),
}

/// Behaviour beyond the script, for long runs that cannot list every reply up front (`ebg-notify
/// simulate` spreads failures over thousands of sends and reports back like VA does). Both methods are
/// called from the request handler, so they must not block: spawn anything slow.
pub trait Behaviour: Send + Sync + 'static {
    /// The reply to a request that passed auth, validation and the rate limit, once the script is empty.
    fn reply(&self, _endpoint: Endpoint, _body: &Value) -> Reply {
        Reply::Created
    }

    /// VA created a notification with this id for this request (before the answer is sent, as VA
    /// persists first).
    fn created(&self, _endpoint: Endpoint, _id: Uuid, _body: &Value) {}
}

/// The VA Notify endpoint a request went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Email,
    Sms,
    Push,
}

/// One request the fake saw.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Which endpoint was called.
    pub endpoint: Endpoint,
    /// The parsed JSON body; `None` if it was not JSON or not sent as `application/json`.
    pub body: Option<Value>,
    /// Whether the bearer JWT passed VA's checks.
    pub auth_ok: bool,
    /// The status the fake answered (or, for [`Reply::Timeout`], answers once the hold is over).
    pub status: u16,
    /// The scripted or default reply used; `None` when auth or validation rejected the request first.
    pub reply: Option<Reply>,
}

impl RecordedRequest {
    /// The `reference` field, if the body had one.
    pub fn reference(&self) -> Option<&str> {
        self.body.as_ref()?.get("reference")?.as_str()
    }
}

struct Shared {
    service_id: Uuid,
    secret: String,
    push_service_id: Uuid,
    push_secret: String,
    base_url: String,
    script: Mutex<VecDeque<Reply>>,
    latency: Mutex<Duration>,
    rate_limit: Mutex<Option<RateWindow>>,
    recording: AtomicBool,
    records: Mutex<Vec<RecordedRequest>>,
    requests_total: AtomicU64,
    created_total: AtomicU64,
    rate_limited_total: AtomicU64,
    /// Every notification created, oldest first (kept even with recording off: they are VA's state).
    notifications: Mutex<Vec<Created>>,
    /// Scripted answers for list requests; empty means answer from `notifications`.
    lookup_script: Mutex<VecDeque<Reply>>,
    lookups_total: AtomicU64,
    /// Set with [`FakeVaNotify::set_behaviour`]; none answers [`Reply::Created`] after the script.
    behaviour: Mutex<Option<Arc<dyn Behaviour>>>,
}

/// A notification the fake created.
#[derive(Clone, Debug)]
struct Created {
    id: Uuid,
    /// Email or SMS (pushes are not kept).
    endpoint: Endpoint,
    reference: Option<String>,
    template_id: Value,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// VA's per-key limit: at most `limit` requests in any 60 s sliding window.
struct RateWindow {
    limit: usize,
    recent: VecDeque<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running fake. Dropping it stops the server.
pub struct FakeVaNotify {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for FakeVaNotify {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeVaNotify {
    /// Starts on a random loopback port with a random service id and a 36-char UUID secret.
    pub async fn start() -> Self {
        Self::start_with(Uuid::new_v4(), Uuid::new_v4().to_string()).await
    }

    /// Starts on a random loopback port for the given service (any secret shape, e.g. 86 chars).
    pub async fn start_with(service_id: Uuid, secret: impl Into<String>) -> Self {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), service_id, secret)
            .await
            .expect("bind the fake VA Notify to a loopback port")
    }

    /// Starts on `addr` (the CLI uses this to honour `--port`).
    pub async fn bind(addr: SocketAddr, service_id: Uuid, secret: impl Into<String>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            service_id,
            secret: secret.into(),
            push_service_id: Uuid::new_v4(),
            push_secret: Uuid::new_v4().to_string(),
            base_url: format!("http://{addr}"),
            script: Mutex::new(VecDeque::new()),
            latency: Mutex::new(Duration::ZERO),
            rate_limit: Mutex::new(None),
            recording: AtomicBool::new(true),
            records: Mutex::new(Vec::new()),
            requests_total: AtomicU64::new(0),
            created_total: AtomicU64::new(0),
            rate_limited_total: AtomicU64::new(0),
            notifications: Mutex::new(Vec::new()),
            lookup_script: Mutex::new(VecDeque::new()),
            lookups_total: AtomicU64::new(0),
            behaviour: Mutex::new(None),
        });
        let app = Router::new()
            .route("/v2/notifications/email", post(send_email))
            .route("/v2/notifications/sms", post(send_sms))
            .route("/v2/notifications/push", post(send_push))
            .route("/v2/notifications", get(list_notifications))
            .route("/_fake/stats", get(stats))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("fake VA Notify stopped: {err}");
            }
        });
        Ok(Self { addr, shared, server })
    }

    /// `http://127.0.0.1:PORT`, to use as `notify.base_url`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service id tokens must carry as `iss`.
    pub fn service_id(&self) -> Uuid {
        self.shared.service_id
    }

    /// The secret tokens must be signed with.
    pub fn secret(&self) -> &str {
        &self.shared.secret
    }

    /// A key in VA's format that this fake accepts: `test-key-{service_id}-{secret}`.
    pub fn api_key(&self) -> String {
        format!("test-key-{}-{}", self.shared.service_id, self.shared.secret)
    }

    /// The push key this fake accepts on `/v2/notifications/push` (and only there):
    /// `test-push-key-{push_service_id}-{push_secret}`.
    pub fn push_api_key(&self) -> String {
        format!("test-push-key-{}-{}", self.shared.push_service_id, self.shared.push_secret)
    }

    /// Requests to one endpoint.
    pub fn requests_to(&self, endpoint: Endpoint) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.endpoint == endpoint).collect()
    }

    /// Queues replies for the next valid requests, after any already queued.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.script).extend(replies);
    }

    /// Replies (after the script) and hears of created notifications through `behaviour`.
    pub fn set_behaviour(&self, behaviour: Arc<dyn Behaviour>) {
        *lock(&self.shared.behaviour) = Some(behaviour);
    }

    /// Delay added before every answer, like VA's own processing time.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.shared.latency) = latency;
    }

    /// Enforces VA's per-minute limit: beyond `per_minute` requests in a sliding 60 s window, answers 429
    /// `RateLimitError`. `None` (the default) disables it.
    pub fn set_rate_limit(&self, per_minute: Option<u32>) {
        *lock(&self.shared.rate_limit) =
            per_minute.map(|limit| RateWindow { limit: limit as usize, recent: VecDeque::new() });
    }

    /// Whether request bodies are kept for [`Self::requests`] (on by default; long runs turn it off and
    /// read the counters instead).
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }

    /// Every recorded request, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.records).clone()
    }

    /// The requests answered 201: the notifications VA would have created.
    pub fn accepted(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.status == 201).collect()
    }

    /// The `reference` of every accepted request.
    pub fn accepted_references(&self) -> Vec<String> {
        self.accepted().iter().filter_map(|r| r.reference().map(str::to_owned)).collect()
    }

    /// Requests received (counted even when recording is off).
    pub fn requests_total(&self) -> u64 {
        self.shared.requests_total.load(Ordering::Relaxed)
    }

    /// Requests answered 201 (counted even when recording is off).
    pub fn created_total(&self) -> u64 {
        self.shared.created_total.load(Ordering::Relaxed)
    }

    /// Queues answers for the next list requests (e.g. [`Reply::Status500`]); [`Reply::Created`] means
    /// "answer normally".
    pub fn script_lookups(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.lookup_script).extend(replies);
    }

    /// `GET /v2/notifications` requests received.
    pub fn lookups_total(&self) -> u64 {
        self.shared.lookups_total.load(Ordering::Relaxed)
    }

    /// How many notifications VA holds with this `reference`.
    pub fn created_with_reference(&self, reference: &str) -> usize {
        lock(&self.shared.notifications).iter().filter(|n| n.reference.as_deref() == Some(reference)).count()
    }

    /// Every reference VA holds a notification for, with how many (counted even with recording off).
    pub fn references(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for n in lock(&self.shared.notifications).iter() {
            if let Some(reference) = &n.reference {
                *counts.entry(reference.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Requests refused by the per-minute limit set with [`Self::set_rate_limit`].
    pub fn rate_limited_total(&self) -> u64 {
        self.shared.rate_limited_total.load(Ordering::Relaxed)
    }
}

/// VA's error body.
fn va_error(status: StatusCode, class: &str, message: &str) -> Response {
    let body = json!({"status_code": status.as_u16(), "errors": [{"error": class, "message": message}]});
    (status, axum::Json(body)).into_response()
}

fn gateway_page(status: StatusCode) -> Response {
    let line = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
    let html = format!("<html><head><title>{line}</title></head><body><center><h1>{line}</h1></center></body></html>");
    (status, [(header::CONTENT_TYPE, "text/html")], html).into_response()
}

/// Checks a bearer token as VA Notify does: HS256 only, signed with the service's secret, `iss` equal to
/// the service id, `iat` within [`JWT_WINDOW_SECONDS`] of `now`. The error is VA's message.
pub fn verify_token(token: &str, service_id: Uuid, secret: &str, now: i64) -> Result<(), &'static str> {
    #[derive(Deserialize)]
    struct Claims {
        iss: Option<String>,
        iat: Option<i64>,
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| "Invalid token: signature, api token is not valid")?;
    if header.alg != Algorithm::HS256 {
        return Err("Invalid token: algorithm used is not HS256");
    }
    let mut validation = Validation::new(Algorithm::HS256);
    // VA checks only iss and iat, and iat with its own window below.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation)
        .map_err(|_| "Invalid token: signature, api token is not valid")?
        .claims;
    let iss = claims.iss.ok_or("Invalid token: iss field not provided")?;
    if iss != service_id.to_string() {
        return Err("Invalid token: service not found");
    }
    let iat = claims.iat.ok_or("Invalid token: iat field not provided")?;
    if (now - iat).abs() > JWT_WINDOW_SECONDS {
        return Err("Error: Your system clock must be accurate to within 30 seconds");
    }
    Ok(())
}

const ID_TYPES: &[&str] = &["PID", "ICN", "VAPROFILEID", "EDIPI", "BIRLSID"];
const TOP_LEVEL_KEYS: &[&str] = &[
    "template_id",
    "email_address",
    "recipient_identifier",
    "personalisation",
    "reference",
    "billing_code",
    "callback_url",
];

/// VA's email request schema; the error is a ValidationError message.
pub fn validate_email_body(body: &Value) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err("Request body must be a JSON object".into());
    };
    unexpected_key(obj, TOP_LEVEL_KEYS)?;
    match obj.get("template_id").and_then(Value::as_str) {
        None => return Err("template_id is a required property".into()),
        Some(id) if Uuid::try_parse(id).is_err() => return Err("template_id is not a valid UUID".into()),
        Some(_) => {}
    }
    match (obj.get("email_address"), obj.get("recipient_identifier")) {
        (None, None) => return Err("Please provide either email_address or recipient_identifier".into()),
        (Some(email), _) if !email.as_str().is_some_and(|e| e.contains('@')) => {
            return Err("email_address Not a valid email address".into());
        }
        _ => {}
    }
    if let Some(recipient) = obj.get("recipient_identifier") {
        validate_recipient(recipient, ID_TYPES)?;
    }
    if obj.get("personalisation").is_some_and(|p| !p.is_object()) {
        return Err("personalisation is not of type object".into());
    }
    if obj.get("reference").is_some_and(|r| !r.is_string() && !r.is_null()) {
        return Err("reference is not of type string".into());
    }
    if obj.get("billing_code").is_some_and(|b| !b.is_string() && !b.is_null()) {
        return Err("billing_code is not of type string".into());
    }
    validate_callback_url(obj.get("callback_url"))
}

/// A `recipient_identifier` whose `id_type` is one of `allowed`.
fn validate_recipient(recipient: &Value, allowed: &[&str]) -> Result<(), String> {
    let Some(recipient) = recipient.as_object() else {
        return Err("recipient_identifier is not of type object".into());
    };
    if let Some(extra) = recipient.keys().find(|k| !matches!(k.as_str(), "id_type" | "id_value")) {
        return Err(format!("recipient_identifier Additional properties are not allowed ({extra} was unexpected)"));
    }
    match recipient.get("id_type").and_then(Value::as_str) {
        None => return Err("recipient_identifier id_type is a required property".into()),
        Some(t) if !allowed.contains(&t) => {
            return Err(format!("recipient_identifier id_type {t} is not one of {allowed:?}"));
        }
        Some(_) => {}
    }
    if !recipient.get("id_value").is_some_and(Value::is_string) {
        return Err("recipient_identifier id_value is a required property of type string".into());
    }
    Ok(())
}

fn unexpected_key(obj: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(extra) => Err(format!("Additional properties are not allowed ({extra} was unexpected)")),
        None => Ok(()),
    }
}

const SMS_KEYS: &[&str] = &[
    "template_id",
    "phone_number",
    "recipient_identifier",
    "personalisation",
    "reference",
    "billing_code",
    "callback_url",
    "sms_sender_id",
];

/// VA's SMS request schema; the error is a ValidationError message.
pub fn validate_sms_body(body: &Value) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err("Request body must be a JSON object".into());
    };
    unexpected_key(obj, SMS_KEYS)?;
    match obj.get("template_id").and_then(Value::as_str) {
        None => return Err("template_id is a required property".into()),
        Some(id) if Uuid::try_parse(id).is_err() => return Err("template_id is not a valid UUID".into()),
        Some(_) => {}
    }
    match (obj.get("phone_number"), obj.get("recipient_identifier")) {
        (None, None) => return Err("Please provide either phone_number or recipient_identifier".into()),
        (Some(phone), _)
            if !phone.as_str().is_some_and(|p| p.starts_with('+') || p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            return Err("phone_number Not a valid phone number".into());
        }
        _ => {}
    }
    if let Some(recipient) = obj.get("recipient_identifier") {
        validate_recipient(recipient, ID_TYPES)?;
    }
    if obj.get("personalisation").is_some_and(|p| !p.is_object()) {
        return Err("personalisation is not of type object".into());
    }
    if obj.get("reference").is_some_and(|r| !r.is_string() && !r.is_null()) {
        return Err("reference is not of type string".into());
    }
    if obj.get("sms_sender_id").is_some_and(|s| s.as_str().is_none_or(|s| Uuid::try_parse(s).is_err())) {
        return Err("sms_sender_id is not a valid UUID".into());
    }
    validate_callback_url(obj.get("callback_url"))
}

/// The mobile apps VA Notify pushes to.
const MOBILE_APPS: &[&str] = &["VA_FLAGSHIP_APP", "VETEXT"];

/// VA's push request schema: `mobile_app`, `template_id` (a VEText id, a string), `recipient_identifier`
/// (ICN only), `personalisation`; nothing else, so `reference` and `callback_url` are refused.
pub fn validate_push_body(body: &Value) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err("Request body must be a JSON object".into());
    };
    unexpected_key(obj, &["mobile_app", "template_id", "recipient_identifier", "personalisation"])?;
    if obj.get("mobile_app").is_some_and(|a| a.as_str().is_none_or(|a| !MOBILE_APPS.contains(&a))) {
        return Err(format!("mobile_app is not one of {MOBILE_APPS:?}"));
    }
    if obj.get("template_id").is_none_or(|t| t.as_str().is_none_or(str::is_empty)) {
        return Err("template_id is a required property of type string".into());
    }
    match obj.get("recipient_identifier") {
        None => return Err("recipient_identifier is a required property".into()),
        Some(recipient) => validate_recipient(recipient, &["ICN"])?,
    }
    if obj.get("personalisation").is_some_and(|p| !p.is_object() && !p.is_null()) {
        return Err("personalisation is not of type object".into());
    }
    Ok(())
}

fn validate_callback_url(callback: Option<&Value>) -> Result<(), String> {
    let Some(callback) = callback else { return Ok(()) };
    let ok = callback
        .as_str()
        .and_then(|u| url::Url::parse(u).ok().map(|parsed| (u.len(), parsed)))
        .is_some_and(|(len, parsed)| parsed.scheme() == "https" && parsed.host().is_some() && len <= 255);
    if ok { Ok(()) } else { Err("callback_url is not a valid https url".into()) }
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The decision for one request, made before any waiting so the record exists even if the client hangs up.
enum Decision {
    Reject(Response),
    Reply(Reply),
}

async fn send_email(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    notification(shared, Endpoint::Email, headers, body).await
}

async fn send_sms(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    notification(shared, Endpoint::Sms, headers, body).await
}

async fn send_push(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    notification(shared, Endpoint::Push, headers, body).await
}

/// One notification request: auth with the endpoint's key, the endpoint's schema, then the scripted reply.
async fn notification(shared: Arc<Shared>, endpoint: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
    shared.requests_total.fetch_add(1, Ordering::Relaxed);
    let (service_id, secret) = match endpoint {
        Endpoint::Email | Endpoint::Sms => (shared.service_id, shared.secret.as_str()),
        Endpoint::Push => (shared.push_service_id, shared.push_secret.as_str()),
    };
    let validate = match endpoint {
        Endpoint::Email => validate_email_body,
        Endpoint::Sms => validate_sms_body,
        Endpoint::Push => validate_push_body,
    };
    // Like VA (Flask's `get_json`), a body without a JSON content type is not read as JSON.
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    let parsed: Option<Value> = if is_json { serde_json::from_slice(&body).ok() } else { None };

    let auth = match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        None => Err((StatusCode::UNAUTHORIZED, "Unauthorized, authentication token must be provided")),
        Some(value) => match value.strip_prefix("Bearer ") {
            None => Err((StatusCode::UNAUTHORIZED, "Unauthorized, authentication bearer scheme must be used")),
            Some(token) => {
                verify_token(token.trim(), service_id, secret, now_unix()).map_err(|msg| (StatusCode::FORBIDDEN, msg))
            }
        },
    };

    let decision = match (&auth, &parsed) {
        (Err((status, msg)), _) => Decision::Reject(va_error(*status, "AuthError", msg)),
        (Ok(()), None) => {
            Decision::Reject(va_error(StatusCode::BAD_REQUEST, "BadRequestError", "Invalid JSON supplied in POST data"))
        }
        (Ok(()), Some(value)) => match validate(value) {
            Err(msg) => Decision::Reject(va_error(StatusCode::BAD_REQUEST, "ValidationError", &msg)),
            // Push has no per-minute limit on VA's side; email and SMS share the service's.
            Ok(()) if endpoint != Endpoint::Push && shared.over_rate_limit() => {
                shared.rate_limited_total.fetch_add(1, Ordering::Relaxed);
                Decision::Reply(Reply::RateLimit)
            }
            Ok(()) => Decision::Reply(lock(&shared.script).pop_front().unwrap_or_else(|| {
                let behaviour = lock(&shared.behaviour).clone();
                behaviour.map_or(Reply::Created, |b| b.reply(endpoint, value))
            })),
        },
    };

    let response = match &decision {
        Decision::Reject(response) => response.status(),
        Decision::Reply(reply) => reply_status(reply),
    };
    // VA persists the notification before answering: it exists even if the client hangs up now.
    let created = (response == StatusCode::CREATED && endpoint != Endpoint::Push)
        .then(|| shared.create(endpoint, parsed.as_ref()));
    if let (Some(created), Some(body)) = (&created, &parsed) {
        let behaviour = lock(&shared.behaviour).clone();
        if let Some(behaviour) = behaviour {
            behaviour.created(endpoint, created.id, body);
        }
    }
    if response == StatusCode::CREATED {
        shared.created_total.fetch_add(1, Ordering::Relaxed);
    }
    if shared.recording.load(Ordering::Relaxed) {
        lock(&shared.records).push(RecordedRequest {
            endpoint,
            body: parsed.clone(),
            auth_ok: auth.is_ok(),
            status: response.as_u16(),
            reply: match &decision {
                Decision::Reply(reply) => Some(reply.clone()),
                Decision::Reject(_) => None,
            },
        });
    }

    let latency = *lock(&shared.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match decision {
        Decision::Reject(response) => response,
        Decision::Reply(reply) => shared.render(reply, endpoint, parsed.as_ref(), created).await,
    }
}

/// Query keys VA's `get_notifications_request` schema allows; anything else is a ValidationError.
const LIST_QUERY_KEYS: &[&str] = &["reference", "status", "template_type", "older_than", "include_jobs"];

/// `GET /v2/notifications`: the service's notifications, newest first, filtered by `reference`.
async fn list_notifications(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    shared.lookups_total.fetch_add(1, Ordering::Relaxed);
    let auth = match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        None => Err((StatusCode::UNAUTHORIZED, "Unauthorized, authentication token must be provided")),
        Some(value) => match value.strip_prefix("Bearer ") {
            None => Err((StatusCode::UNAUTHORIZED, "Unauthorized, authentication bearer scheme must be used")),
            Some(token) => verify_token(token.trim(), shared.service_id, &shared.secret, now_unix())
                .map_err(|msg| (StatusCode::FORBIDDEN, msg)),
        },
    };
    let latency = *lock(&shared.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Err((status, msg)) = auth {
        return va_error(status, "AuthError", msg);
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some((key, _)) = pairs.iter().find(|(k, _)| !LIST_QUERY_KEYS.contains(&k.as_str())) {
        let message = format!("Additional properties are not allowed ({key} was unexpected)");
        return va_error(StatusCode::BAD_REQUEST, "ValidationError", &message);
    }
    let scripted = lock(&shared.lookup_script).pop_front();
    match scripted {
        None | Some(Reply::Created) => {}
        Some(reply) => return shared.render(reply, Endpoint::Email, None, None).await,
    }
    let reference = pairs.iter().find(|(k, _)| k == "reference").map(|(_, v)| v.clone());
    let found: Vec<Value> = lock(&shared.notifications)
        .iter()
        .rev()
        .filter(|n| reference.is_none() || n.reference == reference)
        .map(|n| shared.serialize(n))
        .collect();
    let current = match &reference {
        Some(r) => format!("{}/v2/notifications?reference={r}", shared.base_url),
        None => format!("{}/v2/notifications", shared.base_url),
    };
    let mut links = json!({ "current": current });
    if let Some(last) = found.last().and_then(|n| n["id"].as_str()) {
        links["next"] = json!(format!("{current}{}older_than={last}", if reference.is_some() { "&" } else { "?" }));
    }
    axum::Json(json!({ "notifications": found, "links": links })).into_response()
}

fn reply_status(reply: &Reply) -> StatusCode {
    match reply {
        Reply::Created | Reply::Timeout(_) => StatusCode::CREATED,
        Reply::Status500 => StatusCode::INTERNAL_SERVER_ERROR,
        Reply::BadGateway => StatusCode::BAD_GATEWAY,
        Reply::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        Reply::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        Reply::RateLimit | Reply::DailyLimit => StatusCode::TOO_MANY_REQUESTS,
        Reply::BadRequest => StatusCode::BAD_REQUEST,
        Reply::Forbidden | Reply::PushNotAllowed => StatusCode::FORBIDDEN,
        Reply::NotFound => StatusCode::NOT_FOUND,
        Reply::Impaired => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl Shared {
    fn over_rate_limit(&self) -> bool {
        let mut guard = lock(&self.rate_limit);
        let Some(window) = guard.as_mut() else { return false };
        let now = Instant::now();
        while window.recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            window.recent.pop_front();
        }
        if window.recent.len() >= window.limit {
            return true;
        }
        window.recent.push_back(now);
        false
    }

    /// Records a new notification and returns it.
    fn create(&self, endpoint: Endpoint, body: Option<&Value>) -> Created {
        let field = |name: &str| body.and_then(|b| b.get(name)).cloned().unwrap_or(Value::Null);
        let created = Created {
            id: Uuid::new_v4(),
            endpoint,
            reference: field("reference").as_str().map(str::to_owned),
            template_id: field("template_id"),
            created_at: chrono::Utc::now(),
        };
        lock(&self.notifications).push(created.clone());
        created
    }

    /// A notification as VA's list and get endpoints show it (contact details and content left out:
    /// fixed text keeps PII out of test logs).
    fn serialize(&self, n: &Created) -> Value {
        let template_uri = format!(
            "{}/services/{}/templates/{}",
            self.base_url,
            self.service_id,
            n.template_id.as_str().unwrap_or("")
        );
        let (kind, subject, body) = match n.endpoint {
            Endpoint::Sms => ("sms", Value::Null, "VA: your decision letter is ready."),
            Endpoint::Email | Endpoint::Push => {
                ("email", json!("Decision letter available"), "Your decision letter is ready.")
            }
        };
        json!({
            "id": n.id,
            "reference": n.reference,
            "type": kind,
            "status": "created",
            "status_reason": null,
            "template": {"id": n.template_id, "version": 1, "uri": template_uri},
            "subject": subject,
            "body": body,
            "created_at": n.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "created_by_name": null,
            "sent_at": null,
            "completed_at": null,
            "scheduled_for": null,
        })
    }

    async fn render(
        &self,
        reply: Reply,
        endpoint: Endpoint,
        body: Option<&Value>,
        created: Option<Created>,
    ) -> Response {
        match reply {
            Reply::Created => self.created(endpoint, body, created),
            Reply::Timeout(hold) => {
                tokio::time::sleep(hold).await;
                self.created(endpoint, body, created)
            }
            Reply::Status500 => (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"result": "error", "message": "Internal server error"})),
            )
                .into_response(),
            Reply::BadGateway => gateway_page(StatusCode::BAD_GATEWAY),
            Reply::ServiceUnavailable => gateway_page(StatusCode::SERVICE_UNAVAILABLE),
            Reply::GatewayTimeout => gateway_page(StatusCode::GATEWAY_TIMEOUT),
            Reply::RateLimit => va_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RateLimitError",
                "Exceeded rate limit for key type NORMAL of 3000 requests per 60 seconds",
            ),
            Reply::DailyLimit => {
                va_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsError", "Exceeded send limits (1000) for today")
            }
            Reply::BadRequest => va_error(StatusCode::BAD_REQUEST, "BadRequestError", "Template not found"),
            Reply::Forbidden => va_error(StatusCode::FORBIDDEN, "AuthError", "Invalid token: API key revoked"),
            Reply::NotFound => va_error(StatusCode::NOT_FOUND, "NoResultFound", "No result found"),
            Reply::PushNotAllowed => {
                va_error(StatusCode::FORBIDDEN, "BadRequestError", "Service is not allowed to send push notifications")
            }
            Reply::Impaired => (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"result": "error", "message": "VA Notify service impaired, please try again"})),
            )
                .into_response(),
        }
    }

    /// VA's 201 body. The content is fixed text: echoing personalisation would copy PII into test logs.
    /// Push answers `{"result":"success"}` with no id (and is not kept).
    fn created(&self, endpoint: Endpoint, body: Option<&Value>, created: Option<Created>) -> Response {
        let content = match endpoint {
            Endpoint::Push => return (StatusCode::CREATED, axum::Json(json!({"result": "success"}))).into_response(),
            Endpoint::Email => {
                json!({"body": "Your decision letter is ready.", "subject": "Decision letter available"})
            }
            Endpoint::Sms => json!({"body": "VA: your decision letter is ready.", "from_number": "+18008271000"}),
        };
        // A scripted reply to a list request has no notification yet: create one, as a 201 means VA has it.
        let id = created.unwrap_or_else(|| self.create(endpoint, body)).id;
        let field = |name: &str| body.and_then(|b| b.get(name)).cloned().unwrap_or(Value::Null);
        let template_id = field("template_id");
        let template_uri =
            format!("{}/services/{}/templates/{}", self.base_url, self.service_id, template_id.as_str().unwrap_or(""));
        let response = json!({
            "id": id,
            "reference": field("reference"),
            "uri": format!("{}/v2/notifications/{id}", self.base_url),
            "template": {"id": template_id, "version": 1, "uri": template_uri},
            "content": content,
            "scheduled_for": null,
        });
        (StatusCode::CREATED, axum::Json(response)).into_response()
    }
}

/// Counters for load tests, which run with recording off.
async fn stats(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(json!({
        "requests": shared.requests_total.load(Ordering::Relaxed),
        "created": shared.created_total.load(Ordering::Relaxed),
        "rate_limited": shared.rate_limited_total.load(Ordering::Relaxed),
    }))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";

    fn token(claims: Value, alg: Algorithm, secret: &str) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    #[test]
    fn jwt_window_matches_the_spec_vectors() {
        let service = Uuid::new_v4();
        let now = 1_800_000_000;
        let at = |iat: i64| token(json!({"iss": service.to_string(), "iat": iat}), Algorithm::HS256, SECRET);
        assert!(verify_token(&at(now - 30), service, SECRET, now).is_ok());
        assert!(verify_token(&at(now - 31), service, SECRET, now).is_err());
        assert!(verify_token(&at(now + 30), service, SECRET, now).is_ok());
        assert!(verify_token(&at(now + 31), service, SECRET, now).is_err());
    }

    #[test]
    fn jwt_rejects_wrong_secret_issuer_algorithm_and_missing_claims() {
        let service = Uuid::new_v4();
        let now = 1_800_000_000;
        let good = json!({"iss": service.to_string(), "iat": now});
        assert!(verify_token(&token(good.clone(), Algorithm::HS256, "other"), service, SECRET, now).is_err());
        assert!(verify_token(&token(good.clone(), Algorithm::HS512, SECRET), service, SECRET, now).is_err());
        let wrong_iss = json!({"iss": Uuid::new_v4().to_string(), "iat": now});
        assert!(verify_token(&token(wrong_iss, Algorithm::HS256, SECRET), service, SECRET, now).is_err());
        let no_iat = json!({"iss": service.to_string()});
        assert!(verify_token(&token(no_iat, Algorithm::HS256, SECRET), service, SECRET, now).is_err());
        assert!(verify_token("not.a.token", service, SECRET, now).is_err());
    }

    #[test]
    fn schema_accepts_the_minimal_body_and_rejects_extras() {
        let ok = json!({
            "template_id": Uuid::new_v4().to_string(),
            "recipient_identifier": {"id_type": "PID", "id_value": "123"},
            "personalisation": {"host": "www.va.gov"},
            "reference": "r",
        });
        assert_eq!(validate_email_body(&ok), Ok(()));
        let with = |key: &str, value: Value| {
            let mut body = ok.clone();
            body[key] = value;
            validate_email_body(&body)
        };
        assert!(with("email_reply_to_id", json!(Uuid::new_v4().to_string())).is_err());
        assert!(with("template_id", json!("nope")).is_err());
        assert!(with("recipient_identifier", json!({"id_type": "SSN", "id_value": "1"})).is_err());
        assert!(with("recipient_identifier", json!({"id_type": "PID", "id_value": 1})).is_err());
        assert!(with("recipient_identifier", json!({"id_type": "PID", "id_value": "1", "x": 1})).is_err());
        assert!(with("personalisation", json!("text")).is_err());
        assert!(with("callback_url", json!("http://insecure.example")).is_err());
        assert!(with("callback_url", json!("https://ok.example/cb")).is_ok());
        assert!(validate_email_body(&json!({"template_id": Uuid::new_v4().to_string()})).is_err());
    }
}
