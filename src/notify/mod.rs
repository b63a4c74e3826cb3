//! VA Notify client (SPEC §6).
//!
//! INTERFACE STUB: the live client lands in a follow-up commit; only sandbox mode works here.

use uuid::Uuid;

use crate::config::{NotifyConfig, NotifyMode};

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

/// VA Notify accepted the notification.
#[derive(Clone, Debug)]
pub struct SentNotification {
    pub id: Uuid,
}

/// How the worker should treat a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transport error, timeout, 5xx, per-minute 429: retry with backoff.
    Retryable,
    /// Daily-limit 429 (`TooManyRequestsError`): park until the next day.
    DailyLimit,
    /// 400/401/403/404/413: do not retry.
    Final,
    /// The circuit breaker is open; no call was made.
    CircuitOpen,
}

/// A failed VA Notify call. `error` is a bounded label (VA's error class or a transport kind).
#[derive(Clone, Debug, thiserror::Error)]
#[error("VA Notify call failed: {class:?} {error} (HTTP {http_status:?})")]
pub struct NotifyError {
    pub class: ErrorClass,
    pub http_status: Option<u16>,
    pub error: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("notify: {0}")]
pub struct NotifyInitError(pub String);

/// Maps the API host to the web host VA.gov links use (`api.va.gov` -> `www.va.gov`).
pub fn web_host(api_host: &str) -> String {
    match api_host {
        "api.va.gov" => "www.va.gov".to_owned(),
        other => match other.strip_suffix("-api.va.gov") {
            Some(env) => format!("{env}.va.gov"),
            None => other.to_owned(),
        },
    }
}

/// Sandbox mode only: where to post the fake `delivered` callback, and the bearer token to use.
pub struct SandboxCallback {
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

/// The VA Notify client the workers use (cheap to clone).
#[derive(Clone)]
pub struct NotifyClient {}

impl NotifyClient {
    pub fn from_config(
        cfg: &NotifyConfig,
        _sandbox_callback: Option<SandboxCallback>,
    ) -> Result<Self, NotifyInitError> {
        if cfg.mode == NotifyMode::Live {
            return Err(NotifyInitError("live mode is not available in this build".into()));
        }
        Ok(Self {})
    }

    pub async fn send_email(&self, _email: &EmailRequest<'_>) -> Result<SentNotification, NotifyError> {
        Ok(SentNotification { id: Uuid::new_v4() })
    }

    pub fn breaker_state(&self) -> BreakerState {
        BreakerState::Closed
    }
}
