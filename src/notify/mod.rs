//! VA Notify client (SPEC §6, CHANNELS.md §3): API-key parsing, a fresh JWT per request, the exact email, SMS
//! and push payloads, error classification for the outbox worker, rate limiters and circuit breakers.
//!
//! Email and SMS share VA's per-service limit and API key, so they share one [`Lane`] (key, limiter, breaker);
//! push has its own key (`notify.push_api_key`) and therefore its own lane.
//!
//! Layout: `api_key` parses the key, `jwt` signs, `client` makes one HTTP call, `classify` reads the
//! answer, `breaker` guards against a failing upstream, `sandbox` stands in for VA locally.

mod api_key;
mod breaker;
mod classify;
mod client;
mod jwt;
mod sandbox;
pub mod templates;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tracing::instrument;
use uuid::Uuid;

use self::api_key::ApiKey;
pub use self::breaker::Admits;
use self::breaker::{CallHealth, CircuitBreaker};
use self::client::LiveTransport;
use self::sandbox::Sandbox;
use crate::config::{NotifyConfig, NotifyMode, Secret};

/// Counter of calls by `channel` (email, sms, push) and outcome: `sent`, `retryable`, `final`, `daily_limit`,
/// `circuit_open`.
pub const REQUESTS_TOTAL: &str = "ebg_va_notify_requests_total";
/// Histogram of the HTTP call's duration (not the wait for a rate-limit permit).
pub const REQUEST_DURATION_SECONDS: &str = "ebg_va_notify_request_duration_seconds";
/// Gauge of each circuit breaker by `lane` (`notify` for email and SMS, `push`): 0 closed, 1 half-open (a trial
/// call may run or runs), 2 open.
pub const CIRCUIT_STATE: &str = "ebg_va_notify_circuit_state";
/// Lookups by reference (`GET /v2/notifications?reference=`) by outcome: `found`, `none`, or an error class.
pub const LOOKUPS_TOTAL: &str = "ebg_va_notify_lookups_total";

pub use classify::outcome_in_doubt;

/// One email to send. `first_name` is PII: never logged.
pub struct EmailRequest<'a> {
    pub template_id: Uuid,
    pub participant_id: &'a str,
    pub first_name: &'a str,
    /// The `host` personalisation (web host, or the click-tracker host).
    pub host: &'a str,
    /// Our notification id; stays the same on every retry so VA Notify calls can be reconciled.
    pub reference: Uuid,
}

/// One SMS to send: to the mobile number VA Profile has for the participant.
pub struct SmsRequest<'a> {
    pub template_id: Uuid,
    pub participant_id: &'a str,
    /// The `host` personalisation, the only one SMS templates get.
    pub host: &'a str,
    /// Our notification id; stays the same on every retry so VA Notify calls can be reconciled.
    pub reference: Uuid,
}

/// One push notification to send to the VA Flagship mobile app. `icn` is PII: never logged.
pub struct PushRequest<'a> {
    /// A VEText template id: a string, not a UUID.
    pub template_id: &'a str,
    /// The plain ICN (no `^NI^200M^USVHA^P`).
    pub icn: &'a str,
}

/// VA Notify accepted a push (`{"result":"success"}`). Push answers carry no id and get no callbacks, so an
/// accepted push is final (`sent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushAccepted;

/// The VA Notify channels, a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
    Push,
}

impl Channel {
    /// `email`, `sms`, `push`: the label, and the last segment of the API path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Push => "push",
        }
    }
}

/// The client's lanes, each with its own key, rate limiter and circuit breaker: `Notify` carries email and SMS
/// (one key, one per-service limit; lookups by reference too), `Push` carries push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Notify,
    Push,
}

impl Lane {
    /// Both lanes.
    pub const ALL: [Lane; 2] = [Lane::Notify, Lane::Push];

    /// The channels this lane's calls serve.
    pub fn channels(self) -> &'static [Channel] {
        match self {
            Self::Notify => &[Channel::Email, Channel::Sms],
            Self::Push => &[Channel::Push],
        }
    }
}

/// VA Notify accepted the notification.
#[derive(Clone, Debug)]
pub struct SentNotification {
    /// VA Notify's notification id (stored as `va_notify_id`).
    pub id: Uuid,
}

/// How the worker should treat a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transport error, timeout, 5xx, per-minute 429: retry with backoff.
    Retryable,
    /// Daily-limit 429 (`TooManyRequestsError`): park until the next day.
    DailyLimit,
    /// 400/401/403/404/413 (and other 4xx): do not retry.
    Final,
    /// The circuit breaker is open; no call was made.
    CircuitOpen,
}

impl ErrorClass {
    /// The `outcome` label this class is counted under.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::DailyLimit => "daily_limit",
            Self::Final => "final",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// A failed VA Notify call. `error` is a bounded label (VA's error class or a transport kind).
#[derive(Clone, Debug, thiserror::Error)]
#[error("VA Notify call failed: {class:?} {error} (HTTP {http_status:?})")]
pub struct NotifyError {
    pub class: ErrorClass,
    /// The HTTP status, when VA Notify (or a gateway in front of it) answered.
    pub http_status: Option<u16>,
    /// A VA error class (`AuthError`, `RateLimitError`, ...), `other`, `http_<code>` from a fixed table,
    /// or a transport kind (`timeout`, `connect`, `transport`).
    pub error: &'static str,
}

impl NotifyError {
    fn circuit_open() -> Self {
        Self { class: ErrorClass::CircuitOpen, http_status: None, error: "circuit_open" }
    }

    /// A push while no `notify.push_api_key` is configured: nothing was sent, and retrying cannot help.
    fn push_not_configured() -> Self {
        Self { class: ErrorClass::Final, http_status: None, error: "push_not_configured" }
    }
}

/// The client could not be built from its configuration. Never contains the API key's secret.
#[derive(Debug, thiserror::Error)]
#[error("notify: {0}")]
pub struct NotifyInitError(pub String);

/// Maps the API host to the web host VA.gov links use (`api.va.gov` -> `www.va.gov`,
/// `staging-api.va.gov` -> `staging.va.gov`, `dev-api.va.gov` -> `dev.va.gov`); other hosts pass through.
pub fn web_host(api_host: &str) -> String {
    match api_host {
        "api.va.gov" => "www.va.gov".to_owned(),
        other => match other.strip_suffix("-api.va.gov") {
            Some(env) if !env.is_empty() => format!("{env}.va.gov"),
            _ => other.to_owned(),
        },
    }
}

/// The secret part of a VA Notify API key (`{key_name}-{service_id}-{secret}`): the key VA Notify signs
/// callbacks with (`x-enp-signature`). The error never echoes the key.
pub fn api_key_secret(raw: &Secret) -> Result<Secret, NotifyInitError> {
    ApiKey::parse(raw.expose()).map(|key| key.secret)
}

/// Sandbox mode only: where to post the fake `delivered` callback, and the bearer token to use.
pub struct SandboxCallback {
    /// Our own `POST /va_notify/callbacks` URL.
    pub url: String,
    pub bearer_token: String,
}

/// Circuit-breaker state, for metrics and readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value of `ebg_va_notify_circuit_state`.
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// Registers descriptions for this module's metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(REQUESTS_TOTAL, "VA Notify calls by channel and outcome");
    metrics::describe_gauge!(CIRCUIT_STATE, "VA Notify circuit breakers by lane: 0 closed, 1 half-open, 2 open");
    metrics::describe_counter!(LOOKUPS_TOTAL, "VA Notify lookups by reference, by outcome (found, none, error class)");
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of VA Notify calls by channel, excluding rate-limit waits"
    );
}

/// The VA Notify client the workers use. Cheap to clone: all clones share one connection pool and the lanes'
/// rate limiters and breakers, which is what makes the limits hold per replica.
#[derive(Clone)]
pub struct NotifyClient {
    inner: Arc<Mode>,
}

#[expect(clippy::large_enum_variant, reason = "built once per process and kept behind an Arc")]
enum Mode {
    Live(Live),
    /// No limiter or breaker: nothing upstream to protect.
    Sandbox(Sandbox),
}

struct Live {
    /// Email and SMS: `notify.api_key`, `rate_per_minute`.
    main: ApiLane,
    /// Push: `notify.push_api_key`, `push_rate_per_minute`; `None` without a push key.
    push: Option<ApiLane>,
    /// Whole-request timeout of a lookup by reference (email and SMS only: push answers carry no id).
    lookup_timeout: Duration,
}

/// One API key's transport with its own limiter and breaker (the state behind a [`Lane`]).
struct ApiLane {
    transport: LiveTransport,
    limiter: DefaultDirectRateLimiter,
    breaker: CircuitBreaker,
}

impl NotifyClient {
    /// Builds the client. Live mode parses the API keys and validates the URLs; sandbox mode needs neither.
    pub fn from_config(cfg: &NotifyConfig, sandbox_callback: Option<SandboxCallback>) -> Result<Self, NotifyInitError> {
        if cfg.timeout_ms == 0 || cfg.connect_timeout_ms == 0 || cfg.lookup_timeout_ms == 0 {
            return Err(NotifyInitError(
                "notify.timeout_ms, notify.connect_timeout_ms and notify.lookup_timeout_ms: must be at least 1".into(),
            ));
        }
        let sms_sender_id = match cfg.sms_sender_id.trim() {
            "" => None,
            id => Some(
                Uuid::try_parse(id)
                    .map_err(|_| NotifyInitError("notify.sms_sender_id: must be a UUID (or empty for none)".into()))?,
            ),
        };
        let http = crate::upstream::http_client(cfg.timeout(), cfg.connect_timeout())
            .map_err(|e| NotifyInitError(format!("cannot build the HTTP client ({e})")))?;

        let mode = match cfg.mode {
            NotifyMode::Sandbox => Mode::Sandbox(Sandbox::new(http, sandbox_callback, cfg.sandbox_delivery_delay())),
            NotifyMode::Live => {
                let callback_url = match cfg.callback_url.trim() {
                    "" => None,
                    url => Some(validate_callback_url(url)?),
                };
                if cfg.breaker_failure_threshold == 0 {
                    return Err(NotifyInitError("notify.breaker_failure_threshold: must be at least 1".into()));
                }
                let api_key = ApiKey::parse(cfg.api_key.expose())?;
                let transport = LiveTransport::new(http.clone(), &cfg.base_url, &api_key, callback_url, sms_sender_id)?;
                let main = ApiLane::new(transport, cfg, cfg.rate_per_minute, "notify.rate_per_minute")?;
                let push = if cfg.push_api_key.is_empty() {
                    None
                } else {
                    let key = ApiKey::parse_setting(cfg.push_api_key.expose(), "notify.push_api_key")?;
                    let transport = LiveTransport::new(http, &cfg.base_url, &key, None, None)?;
                    Some(ApiLane::new(transport, cfg, cfg.push_rate_per_minute, "notify.push_rate_per_minute")?)
                };
                Mode::Live(Live { main, push, lookup_timeout: cfg.lookup_timeout() })
            }
        };
        Ok(Self { inner: Arc::new(mode) })
    }

    /// Sends one email: fails fast if the breaker is open, waits for a rate-limit permit, then makes
    /// exactly one call. Retrying is the caller's job (keep `reference` the same).
    #[instrument(name = "va_notify.send_email", skip_all, fields(reference = %email.reference))]
    pub async fn send_email(&self, email: &EmailRequest<'_>) -> Result<SentNotification, NotifyError> {
        let result = match &*self.inner {
            Mode::Sandbox(sandbox) => Ok(sandbox.send(email.reference, Channel::Email)),
            Mode::Live(live) => live.main.guarded(Channel::Email, live.main.transport.post_email(email)).await,
        };
        count(Channel::Email, &result);
        result
    }

    /// Sends one SMS through the email lane (same key and per-service limit), like [`Self::send_email`].
    #[instrument(name = "va_notify.send_sms", skip_all, fields(reference = %sms.reference))]
    pub async fn send_sms(&self, sms: &SmsRequest<'_>) -> Result<SentNotification, NotifyError> {
        let result = match &*self.inner {
            Mode::Sandbox(sandbox) => Ok(sandbox.send(sms.reference, Channel::Sms)),
            Mode::Live(live) => live.main.guarded(Channel::Sms, live.main.transport.post_sms(sms)).await,
        };
        count(Channel::Sms, &result);
        result
    }

    /// Sends one push through the push lane (its own key, limiter and breaker). Without a push key in live
    /// mode the answer is a final `push_not_configured`, and no call is made.
    #[instrument(name = "va_notify.send_push", skip_all)]
    pub async fn send_push(&self, push: &PushRequest<'_>) -> Result<PushAccepted, NotifyError> {
        let result = match &*self.inner {
            Mode::Sandbox(_) => Ok(PushAccepted),
            Mode::Live(Live { push: Some(lane), .. }) => {
                lane.guarded(Channel::Push, lane.transport.post_push(push)).await
            }
            Mode::Live(Live { push: None, .. }) => Err(NotifyError::push_not_configured()),
        };
        count(Channel::Push, &result);
        result
    }

    /// VA Notify's ids for the notifications it holds with our `reference` (normally zero or one).
    /// Goes through the breaker and the rate limiter like a send. Sandbox mode keeps nothing and
    /// answers none.
    #[instrument(name = "va_notify.find_by_reference", skip_all, fields(reference = %reference))]
    pub async fn find_by_reference(&self, reference: Uuid) -> Result<Vec<Uuid>, NotifyError> {
        let result = match &*self.inner {
            Mode::Sandbox(_) => Ok(Vec::new()),
            Mode::Live(live) => live.find(reference).await,
        };
        let outcome = match &result {
            Ok(ids) if ids.is_empty() => "none",
            Ok(_) => "found",
            Err(err) => err.class.outcome(),
        };
        metrics::counter!(LOOKUPS_TOTAL, "outcome" => outcome).increment(1);
        result
    }

    /// The email/SMS breaker's state now; always `Closed` in sandbox mode. Also sets its state gauge
    /// (`lane="notify"`).
    pub fn breaker_state(&self) -> BreakerState {
        let state = match &*self.inner {
            Mode::Live(live) => live.main.breaker.state(Instant::now()),
            Mode::Sandbox(_) => BreakerState::Closed,
        };
        metrics::gauge!(CIRCUIT_STATE, "lane" => "notify").set(state.gauge_value());
        state
    }

    /// How many calls `lane` could start now (the claim loop claims no more of its channels than that).
    /// Always `Any` in sandbox mode, and for push without a push key (a push then fails at once, final,
    /// without a call, so there is nothing to protect).
    pub fn admits(&self, lane: Lane) -> Admits {
        let now = Instant::now();
        match (&*self.inner, lane) {
            (Mode::Live(live), Lane::Notify) => live.main.breaker.admits(now),
            (Mode::Live(Live { push: Some(push), .. }), Lane::Push) => push.breaker.admits(now),
            (Mode::Live(Live { push: None, .. }), Lane::Push) | (Mode::Sandbox(_), _) => Admits::Any,
        }
    }

    /// The push breaker's state now; `Closed` in sandbox mode and without a push key. Also sets its state
    /// gauge (`lane="push"`).
    pub fn push_breaker_state(&self) -> BreakerState {
        let state = match &*self.inner {
            Mode::Live(Live { push: Some(lane), .. }) => lane.breaker.state(Instant::now()),
            _ => BreakerState::Closed,
        };
        metrics::gauge!(CIRCUIT_STATE, "lane" => "push").set(state.gauge_value());
        state
    }
}

impl Live {
    /// Looks up by reference on the email/SMS lane (references are only ever ours on that key).
    async fn find(&self, reference: Uuid) -> Result<Vec<Uuid>, NotifyError> {
        let lane = &self.main;
        if lane.breaker.check(Instant::now()).is_err() {
            return Err(NotifyError::circuit_open());
        }
        lane.limiter.until_ready().await;
        let permit = lane.breaker.try_acquire(Instant::now()).map_err(|_| NotifyError::circuit_open())?;
        let result = lane.transport.find(reference, self.lookup_timeout).await;
        permit.settle(call_health(&result), Instant::now());
        result
    }
}

/// Counts one call under its channel and outcome.
fn count<T>(channel: Channel, result: &Result<T, NotifyError>) {
    let outcome = match result {
        Ok(_) => "sent",
        Err(err) => {
            tracing::debug!(
                channel = channel.as_str(),
                class = err.class.outcome(),
                error = err.error,
                http_status = err.http_status,
                "VA Notify call failed"
            );
            err.class.outcome()
        }
    };
    metrics::counter!(REQUESTS_TOTAL, "outcome" => outcome, "channel" => channel.as_str()).increment(1);
}

impl ApiLane {
    fn new(
        transport: LiveTransport,
        cfg: &NotifyConfig,
        rate_per_minute: u32,
        rate_setting: &str,
    ) -> Result<Self, NotifyInitError> {
        let quota = smooth_quota(rate_per_minute)
            .map_err(|_| NotifyInitError(format!("{rate_setting}: must be at least 1")))?;
        Ok(Self {
            transport,
            limiter: RateLimiter::direct(quota),
            breaker: CircuitBreaker::new(cfg.breaker_failure_threshold, cfg.breaker_open()),
        })
    }

    /// Runs `call` (not yet started) under this lane's breaker and limiter, and settles the breaker with its result.
    async fn guarded<T>(
        &self,
        channel: Channel,
        call: impl Future<Output = Result<T, NotifyError>>,
    ) -> Result<T, NotifyError> {
        // Checked before queueing on the limiter so an open breaker answers at once, and again (taking
        // the permit) after, because the breaker may have opened while we waited.
        if self.breaker.check(Instant::now()).is_err() {
            return Err(NotifyError::circuit_open());
        }
        self.limiter.until_ready().await;
        let permit = self.breaker.try_acquire(Instant::now()).map_err(|_| NotifyError::circuit_open())?;

        let started = Instant::now();
        let result = call.await;
        metrics::histogram!(REQUEST_DURATION_SECONDS, "channel" => channel.as_str())
            .record(started.elapsed().as_secs_f64());

        permit.settle(call_health(&result), Instant::now());
        result
    }
}

fn call_health<T>(result: &Result<T, NotifyError>) -> CallHealth {
    match result {
        Err(err) if err.class == ErrorClass::Retryable => CallHealth::Failed,
        _ => CallHealth::Healthy,
    }
}

const MINUTE_NANOS: u64 = 60_000_000_000;

/// A limiter for `rate_per_minute` that never exceeds it in any 60 s window, yet is smooth: the burst is
/// about 100 ms worth of permits (1..=50) instead of governor's default of a whole minute's worth, and the
/// replenish period is stretched so that burst plus steady rate still fits in 60 s.
fn smooth_quota(rate_per_minute: u32) -> Result<Quota, NotifyInitError> {
    let burst = (rate_per_minute / 600).clamp(1, 50);
    // With burst b and period T, a half-open 60 s window admits at most b - 1 + 60 s / T requests;
    // T = 60 s / (rate - b + 1) makes that exactly `rate`. `burst <= rate / 600` keeps the divisor >= 1.
    let steady = rate_per_minute.checked_sub(burst - 1).filter(|n| *n > 0);
    // Rounded up to whole nanoseconds: rounding down would let very high rates overshoot.
    let quota =
        steady.and_then(|steady| Quota::with_period(Duration::from_nanos(MINUTE_NANOS.div_ceil(u64::from(steady)))));
    let burst = NonZeroU32::new(burst);
    match (quota, burst) {
        (Some(quota), Some(burst)) => Ok(quota.allow_burst(burst)),
        _ => Err(NotifyInitError("notify.rate_per_minute: must be at least 1".into())),
    }
}

/// VA Notify only accepts https callback URLs; catching a typo here beats every send failing with a 400.
fn validate_callback_url(raw: &str) -> Result<String, NotifyInitError> {
    match url::Url::parse(raw) {
        Ok(url) if url.scheme() == "https" && url.host().is_some() => Ok(raw.to_owned()),
        _ => Err(NotifyInitError("notify.callback_url: must be an https URL (or empty for none)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_host_maps_api_hosts() {
        assert_eq!(web_host("api.va.gov"), "www.va.gov");
        assert_eq!(web_host("staging-api.va.gov"), "staging.va.gov");
        assert_eq!(web_host("dev-api.va.gov"), "dev.va.gov");
        assert_eq!(web_host("localhost:3000"), "localhost:3000");
        assert_eq!(web_host("-api.va.gov"), "-api.va.gov");
    }

    #[test]
    fn quota_is_smooth_and_fits_the_minute() {
        for rate in [1, 59, 60, 600, 3000, 120_000, u32::MAX] {
            let quota = smooth_quota(rate).unwrap();
            let burst = quota.burst_size().get();
            assert!((1..=50).contains(&burst), "rate {rate}: burst {burst}");
            let steady_in_minute = Duration::from_secs(60).as_nanos() / quota.replenish_interval().as_nanos();
            assert!(u128::from(burst) - 1 + steady_in_minute <= u128::from(rate), "rate {rate} overshoots");
        }
        assert_eq!(smooth_quota(3000).unwrap().burst_size().get(), 5);
        assert!(smooth_quota(0).is_err());
    }

    #[test]
    fn callback_url_must_be_https() {
        assert!(validate_callback_url("https://api.va.gov/va_notify/callbacks").is_ok());
        assert!(validate_callback_url("http://api.va.gov/va_notify/callbacks").is_err());
        assert!(validate_callback_url("api.va.gov/callbacks").is_err());
    }

    #[test]
    fn outcome_labels_are_the_documented_ones() {
        let all = [ErrorClass::Retryable, ErrorClass::DailyLimit, ErrorClass::Final, ErrorClass::CircuitOpen];
        let labels: Vec<_> = all.iter().map(|c| c.outcome()).collect();
        assert_eq!(labels, ["retryable", "daily_limit", "final", "circuit_open"]);
    }
}
