//! Delivery-status callbacks from VA Notify (SPEC §7): who may post them, what each one does to its
//! notification, and the record kept of it.
//!
//! Rules, decided by [`decide`] (a pure function, unit-tested) for each callback of a known notification:
//! - Only `delivered`, `permanent-failure` and `temporary-failure` move a state; in-flight statuses
//!   (`sending`, `sent`, `created`, ...) and anything else are only recorded.
//! - A callback moves the state only when it reports on the notification's latest send: its `id` is the
//!   row's `va_notify_id` (or either is unknown). Callbacks for earlier sends (before a resend) are recorded.
//! - States never go backwards: `delivered` is never overwritten. A `delivered` for the latest send does
//!   override a failure (`temporary_failure`, `permanent_failure`, `failed`, `dead`) and cancels a pending
//!   resend, because it is proof the Veteran got the mail (e.g. a call that timed out on our side but was
//!   created upstream) and a second copy would be worse than a corrected status.
//! - A `temporary-failure` whose reason starts with `Retryable` schedules a resend of the same row
//!   (`queued` after `callbacks.resend_delay_seconds`) while fewer than `callbacks.max_sends` sends were
//!   made, and otherwise ends the row `dead` with VA's reason. Other temporary failures are final.
//! - A final status for a row still `sending` (VA Notify's callback overtook the recording of its 201)
//!   is answered 503, which VA Notify retries, so no outcome is lost to the race.

pub mod signature;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Secret;
use crate::input::{self, InputError, Location};
use crate::metrics as m;
use crate::notify::Channel;
use crate::outbox::channel_policy::{ChannelPolicy, ResendPolicy};
pub use crate::outbox::lifecycle::{Effect, RowState, decide};
use crate::outbox::{self, Status};

/// The callback fields the service reads. `to` (the recipient address) is deliberately not a field:
/// it is never parsed, stored or logged.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CallbackPayload {
    /// VA Notify's notification id (one per send).
    pub id: Option<Uuid>,
    /// Our notification id, as sent in `reference`.
    #[schema(value_type = Option<Uuid>)]
    pub reference: Option<String>,
    /// `delivered`, `permanent-failure`, `temporary-failure`, or an in-flight status.
    pub status: String,
    /// VA Notify's reason, e.g. `Retryable - Unable to deliver at this time`.
    pub status_reason: Option<String>,
    pub created_at: Option<String>,
    pub completed_at: Option<String>,
    pub sent_at: Option<String>,
    pub notification_type: Option<String>,
    pub provider: Option<String>,
}

/// Parses a callback body: strict JSON (no NUL, no repeated key; see [`crate::input`]), the fields
/// typed, and `reference`, when present, a UUID: every reference this service sends is one, so any
/// other value cannot name one of its notifications and is refused rather than silently unmatched.
pub fn parse(body: &[u8]) -> Result<CallbackPayload, InputError> {
    let value = input::parse_json(body)?;
    let payload: CallbackPayload = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let location = if field == "." { Location::Pointer("/".into()) } else { Location::parameter(&field) };
        let detail = match &location {
            Location::Parameter(name) => format!("{name} has the wrong type"),
            _ => "the callback body must be an object with a string status".into(),
        };
        InputError::Invalid { location, detail }
    })?;
    if let Some(reference) = payload.reference.as_deref()
        && Uuid::parse_str(reference.trim()).is_err()
    {
        return Err(InputError::Invalid {
            location: Location::parameter("reference"),
            detail: "reference must be the notification's UUID".into(),
        });
    }
    Ok(payload)
}

/// Who may post callbacks: any configured bearer token, or a valid `x-enp-signature`.
pub struct CallbackAuth {
    tokens: Vec<Secret>,
    signing_secret: Option<Secret>,
}

impl CallbackAuth {
    /// `tokens` are the accepted bearer tokens; `signing_secret` is the VA Notify API key's secret
    /// (none in sandbox mode, where only bearer tokens work).
    pub fn new(tokens: Vec<Secret>, signing_secret: Option<Secret>) -> Self {
        Self { tokens, signing_secret }
    }

    /// True when `token` equals one of the configured tokens. Every token is compared, in constant
    /// time, so timing reveals neither which token matched nor how much of one did.
    pub fn bearer_ok(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.tokens
            .iter()
            .fold(subtle::Choice::from(0), |acc, t| acc | t.expose().as_bytes().ct_eq(token.as_bytes()))
            .into()
    }

    /// True when `signature` is VA Notify's signature of `body`.
    pub fn signature_ok(&self, body: &[u8], signature: &str) -> bool {
        self.signing_secret.as_ref().is_some_and(|secret| signature::verify(secret.expose(), body, signature))
    }
}

/// The outcome of handling one authenticated callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// No notification has this reference or VA Notify id.
    Unknown,
    /// Recorded, with this effect.
    Known(Effect),
}

/// Bounded metric label for a callback status.
pub fn status_label(status: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "delivered",
        "permanent-failure",
        "temporary-failure",
        "technical-failure",
        "sending",
        "sent",
        "created",
        "pending",
        "pending-virus-check",
        "virus-scan-failed",
        "validation-failed",
        "cancelled",
        "preferences-declined",
    ];
    KNOWN.iter().copied().find(|k| *k == status).unwrap_or("other")
}

/// VA Notify's reason is upstream free text: stored (never a label, never logged), but kept short.
fn stored_text(text: Option<&str>) -> Option<String> {
    text.map(|t| t.chars().take(200).collect())
}

fn va_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    text.and_then(|t| t.parse().ok())
}

/// Finds the notification, records the callback and applies its effect, in one transaction.
#[tracing::instrument(skip_all, fields(status = status_label(&payload.status)))]
pub async fn handle(pool: &PgPool, payload: &CallbackPayload, policy: &ChannelPolicy) -> Result<Handled, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let by_reference = payload.reference.as_deref().and_then(|r| Uuid::parse_str(r.trim()).ok());
    let locked = outbox::callbacks::lock_for_callback(&mut tx, by_reference, payload.id).await?;
    let Some(outbox::callbacks::Locked { id, status, sends, va_notify_id, channel }) = locked else {
        return Ok(Handled::Unknown);
    };
    let Some(status) = Status::parse(&status) else {
        return Err(sqlx::Error::Decode(format!("unknown status {status}").into()));
    };
    let latest_send = match (payload.id, va_notify_id) {
        (Some(reported), Some(latest)) => reported == latest,
        _ => true,
    };
    // The row's channel's budget (CHANNELS.md §7): push is never resent, an unknown channel neither.
    let resend = channel_of(&channel).map_or(ResendPolicy::NONE, |c| policy.resend_policy(c));
    let effect = decide(
        RowState { status, sends, latest_send },
        &payload.status,
        payload.status_reason.as_deref(),
        resend.max_sends,
    );
    if effect == Effect::NotYet {
        return Ok(Handled::Known(effect));
    }

    sqlx::query!(
        "insert into notification_events (notification_id, va_notify_id, status, status_reason, created_at,
             completed_at, sent_at, notification_type, provider, effect)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        id,
        payload.id,
        stored_text(Some(&payload.status)),
        stored_text(payload.status_reason.as_deref()),
        va_time(payload.created_at.as_deref()),
        va_time(payload.completed_at.as_deref()),
        va_time(payload.sent_at.as_deref()),
        stored_text(payload.notification_type.as_deref()),
        stored_text(payload.provider.as_deref()),
        effect.as_str(),
    )
    .execute(&mut *tx)
    .await?;

    let reason = stored_text(payload.status_reason.as_deref());
    let applied = outbox::callbacks::apply_callback(&mut tx, id, effect, reason, payload.id, resend.delay).await?;
    tx.commit().await?;
    if applied {
        count(effect, channel_of(&channel).map_or("other", Channel::as_str));
    } else {
        // The row is locked and `decide` read it, so only a rule in `decide` that the lifecycle does
        // not allow gets here: the event is kept, the row left as it is.
        tracing::error!(notification_id = %id, from = status.as_str(), effect = effect.as_str(), "callback effect refused by the lifecycle");
    }
    Ok(Handled::Known(effect))
}

/// The VA Notify channel of a row's `channel`.
fn channel_of(channel: &str) -> Option<Channel> {
    [Channel::Email, Channel::Sms, Channel::Push].into_iter().find(|c| c.as_str() == channel)
}

/// Counts state changes with the same counters (and labels: `channel` is the row's) the worker uses, so
/// `/metrics` and the report agree and each family has one label set.
fn count(effect: Effect, channel: &'static str) {
    match effect {
        Effect::Move(status) => {
            let status = status.as_str();
            metrics::counter!(m::DELIVERIES, "status" => status, "reason" => "va_notify_callback", "channel" => channel)
                .increment(1);
        }
        Effect::Resend => {
            metrics::counter!(m::RETRIES, "reason" => "retryable_temporary_failure").increment(1);
        }
        Effect::Dead => {
            let reason = "retryable_temporary_failure";
            metrics::counter!(m::DELIVERIES, "status" => "dead", "reason" => reason, "channel" => channel).increment(1);
            metrics::counter!(m::DEAD_LETTERS).increment(1);
        }
        Effect::Record | Effect::NotYet => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// Whatever VA Notify (or anyone holding a token) posts, parsing never panics, and what it
        /// accepts is safe to store: no NUL anywhere, a reference that is a UUID.
        #[test]
        fn parse_never_panics_and_accepts_only_storable_payloads(
            status in ".{0,12}",
            reason in proptest::option::of(".{0,12}"),
            reference in proptest::option::of(prop_oneof![".{0,40}", Just(Uuid::new_v4().to_string())]),
            extra in any::<Vec<u8>>(),
        ) {
            let body = serde_json::json!({ "status": status, "status_reason": reason, "reference": reference });
            for bytes in [serde_json::to_vec(&body).unwrap(), extra] {
                if let Ok(p) = parse(&bytes) {
                    prop_assert!(!p.status.contains('\0'));
                    prop_assert!(!p.status_reason.unwrap_or_default().contains('\0'));
                    if let Some(r) = p.reference {
                        prop_assert!(Uuid::parse_str(r.trim()).is_ok());
                    }
                }
            }
        }
    }

    fn row(status: Status, sends: i32, latest_send: bool) -> RowState {
        RowState { status, sends, latest_send }
    }

    const RETRYABLE: Option<&str> = Some("Retryable - Unable to deliver at this time");

    #[test]
    fn final_statuses_move_a_sent_row() {
        let sent = row(Status::Sent, 1, true);
        assert_eq!(decide(sent, "delivered", None, 5), Effect::Move(Status::Delivered));
        assert_eq!(decide(sent, "permanent-failure", Some("Bounced"), 5), Effect::Move(Status::PermanentFailure));
        assert_eq!(decide(sent, "temporary-failure", Some("Mailbox full"), 5), Effect::Move(Status::TemporaryFailure));
    }

    #[test]
    fn in_flight_statuses_never_move_anything() {
        for status in [Status::Sent, Status::Delivered, Status::PermanentFailure, Status::Queued] {
            for cb in ["sending", "sent", "created", "pending", "who-knows"] {
                assert_eq!(decide(row(status, 1, true), cb, None, 5), Effect::Record, "{status} {cb}");
            }
        }
    }

    #[test]
    fn delivered_is_never_overwritten() {
        let delivered = row(Status::Delivered, 1, true);
        for cb in ["permanent-failure", "temporary-failure", "delivered", "sending"] {
            assert_eq!(decide(delivered, cb, RETRYABLE, 5), Effect::Record);
        }
    }

    #[test]
    fn delivered_overrides_a_failure_of_the_same_send() {
        for status in [Status::TemporaryFailure, Status::PermanentFailure, Status::Failed, Status::Dead] {
            assert_eq!(decide(row(status, 1, true), "delivered", None, 5), Effect::Move(Status::Delivered));
            assert_eq!(decide(row(status, 1, false), "delivered", None, 5), Effect::Record);
        }
        // Failures do not replace failures.
        assert_eq!(decide(row(Status::PermanentFailure, 1, true), "temporary-failure", None, 5), Effect::Record);
    }

    #[test]
    fn retryable_temporary_failures_are_resent_until_max_sends() {
        assert_eq!(decide(row(Status::Sent, 1, true), "temporary-failure", RETRYABLE, 5), Effect::Resend);
        assert_eq!(decide(row(Status::Sent, 4, true), "temporary-failure", RETRYABLE, 5), Effect::Resend);
        assert_eq!(decide(row(Status::Sent, 5, true), "temporary-failure", RETRYABLE, 5), Effect::Dead);
        assert_eq!(decide(row(Status::Sent, 1, true), "temporary-failure", RETRYABLE, 1), Effect::Dead);
        // Case matters: VA's prefix is exactly `Retryable`.
        assert_eq!(
            decide(row(Status::Sent, 1, true), "temporary-failure", Some("retryable?"), 5),
            Effect::Move(Status::TemporaryFailure)
        );
    }

    #[test]
    fn callbacks_for_earlier_sends_are_only_recorded() {
        assert_eq!(decide(row(Status::Sent, 2, false), "delivered", None, 5), Effect::Record);
        assert_eq!(decide(row(Status::Sent, 2, false), "temporary-failure", RETRYABLE, 5), Effect::Record);
        // A resend in flight still carries the previous send's id.
        assert_eq!(decide(row(Status::Sending, 1, true), "delivered", None, 5), Effect::Record);
    }

    #[test]
    fn a_callback_that_overtakes_the_201_is_retried_later() {
        assert_eq!(decide(row(Status::Sending, 0, true), "delivered", None, 5), Effect::NotYet);
        assert_eq!(decide(row(Status::Sending, 1, false), "delivered", None, 5), Effect::NotYet);
        assert_eq!(decide(row(Status::Sending, 0, true), "sending", None, 5), Effect::Record);
    }

    #[test]
    fn delivered_cancels_a_pending_resend() {
        assert_eq!(decide(row(Status::Queued, 1, true), "delivered", None, 5), Effect::Move(Status::Delivered));
        assert_eq!(decide(row(Status::Queued, 1, true), "permanent-failure", None, 5), Effect::Record);
        assert_eq!(decide(row(Status::Queued, 0, true), "delivered", None, 5), Effect::Record);
    }

    #[test]
    fn rows_that_were_never_sent_ignore_callbacks() {
        for status in [Status::Suppressed, Status::Duplicate, Status::Skipped] {
            assert_eq!(decide(row(status, 0, true), "delivered", None, 5), Effect::Record);
        }
    }

    #[test]
    fn bearer_tokens_are_all_accepted() {
        let auth = CallbackAuth::new(vec![Secret::new("first-token"), Secret::new("second-token")], None);
        assert!(auth.bearer_ok("first-token"));
        assert!(auth.bearer_ok("second-token"));
        assert!(!auth.bearer_ok("first-toke"));
        assert!(!auth.bearer_ok(""));
        assert!(!CallbackAuth::new(vec![], None).bearer_ok(""));
        assert!(!auth.signature_ok(b"{}", "00"), "no secret: signatures are refused");
    }
}
