//! The outbox: every accepted request is a row in `notifications`, and that row is also the
//! delivery queue entry (SPEC §1, §10). Workers claim due rows with `FOR UPDATE SKIP LOCKED` and a
//! lease; the lease expiry is stored as the row's `next_attempt_at`, so a crashed worker's rows simply
//! become due again.

pub mod backoff;
mod batch;
pub mod callbacks;
pub mod channel_policy;
pub mod clock;
mod finish;
pub mod history;
pub mod lifecycle;
pub mod owner;
pub mod purge;
pub mod quiet_hours;
pub mod release;
pub mod replay;
mod requeue;
mod wakeup;
pub mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

pub use batch::{AcceptLimits, AcceptQueue};
pub use finish::FinishQueue;
pub use lifecycle::{Requeue, Status};
pub use requeue::requeue;
pub use wakeup::Wakeup;

/// Delivery channels of a notification (`notifications.channel`, and a bounded metric label).
pub const CHANNEL_EMAIL: &str = "email";
pub const CHANNEL_SMS: &str = "sms";
pub const CHANNEL_PUSH: &str = "push";
/// Every channel, for zero-initialised metric series.
pub const CHANNELS: [&str; 3] = [CHANNEL_EMAIL, CHANNEL_SMS, CHANNEL_PUSH];

/// One channel of a request to record.
#[derive(Clone, Debug)]
pub struct NewNotification {
    pub channel: &'static str,
    pub participant_id: String,
    /// A VA Notify template UUID (email, SMS; canonical lowercase text) or a VEText template id (push).
    pub template_id: String,
    pub idempotency_key: Option<String>,
    /// The toggle's answer for this participant; `false` records the row as `suppressed`.
    pub enabled: bool,
}

/// The committed outcome of an accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: Uuid,
    pub status: Status,
    /// True when an earlier request with the same Idempotency-Key answered for this one.
    pub replayed: bool,
}

/// Why an accept did not commit.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The Idempotency-Key was used before for a different participant, template or channel.
    #[error("Idempotency-Key was already used for a different request")]
    KeyConflict,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The accept queue is shut down (the process is stopping).
    #[error("the service is shutting down")]
    Closed,
    /// Not taken into a transaction within `accept.deadline_ms`; it never will be.
    #[error("not recorded within accept.deadline_ms")]
    Deadline,
    /// The transaction failed or never started; nothing was recorded.
    #[error("not recorded: {0}")]
    NotRecorded(String),
    /// COMMIT was sent but its acknowledgement was lost: the row may exist (the one residual case).
    #[error("commit not acknowledged")]
    CommitUnknown,
}

/// Interprets one row returned by `accept_notification`.
fn to_accepted(id: Uuid, status: &str, replayed: bool, key_conflict: bool) -> Result<Accepted, AcceptError> {
    if key_conflict {
        return Err(AcceptError::KeyConflict);
    }
    let status = Status::parse(status).ok_or_else(|| sqlx::Error::Decode(format!("unknown status {status}").into()))?;
    Ok(Accepted { id, status, replayed })
}

/// A row leased to a worker.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    /// `email`, `sms` or `push`.
    pub channel: String,
    pub participant_id: String,
    /// As requested (see [`NewNotification::template_id`]).
    pub template_id: String,
    pub attempts: i32,
    /// Proves the lease is still ours when the result is written.
    pub lease_token: Uuid,
    /// Sends VA Notify accepted before this claim; more than 0 makes this a resend.
    pub sends: i32,
    /// VA Notify calls made before the current send began (the retry budget is per send).
    pub attempts_before_send: i32,
    /// When the latest earlier call of this send whose outcome is unknown began (a crash left it
    /// `in_flight`, or it timed out): VA Notify may hold the notification, so it is looked up by
    /// reference before anything is sent.
    pub in_doubt_since: Option<DateTime<Utc>>,
}

impl Claimed {
    /// The number of `try_number` (a value of `attempts`) within the current send, from 1.
    pub fn try_in_send(&self, try_number: i32) -> i32 {
        try_number - self.attempts_before_send
    }
}

/// Leases up to `limit` due rows (queued, waiting for a retry, or with an expired lease) and begins
/// a try on each: `attempts` is counted and an `in_flight` attempt record written, in the same
/// statement, before any call leaves the process. A crash from here on leaves that record behind,
/// which is how a possible double send is recognised and reconciled by its `reference`.
/// A try that ends without a VA Notify call removes its record again (see [`finish_try`]).
///
/// `owner` (see [`owner`]) is recorded on the leases. Rows leased by an owner whose advisory lock is
/// free (its process died) are taken at once, before their lease expires.
///
/// Only rows of `channels` are taken: the worker leaves out the channels whose VA Notify lane admits no
/// call now (its breaker is open), so their rows wait, untouched, instead of being claimed and pushed back.
#[tracing::instrument(skip_all, fields(limit))]
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
    owner: Option<i32>,
    channels: &[&str],
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_file_as!(
        Claimed,
        "src/outbox/sql/claim.sql",
        limit,
        pg_interval(lease),
        owner,
        owner::OWNER_LOCK_CLASS,
        channels as &[&str]
    )
    .fetch_all(pool)
    .await
}

/// The claim statement (`sql/claim.sql`), exposed so a test can EXPLAIN it against a large backlog (and
/// pinned to the lifecycle by unit tests).
pub const CLAIM_SQL: &str = include_str!("sql/claim.sql");

/// Calls whose outcome is unknown: no answer was recorded (`in_flight`), or the call timed out or lost
/// its connection after the request was sent. Kept in step with `notify::outcome_in_doubt`; spelled
/// out in `sql/claim.sql` and `sql/finish.sql` (a test pins both to this).
#[cfg(test)]
const IN_DOUBT_ATTEMPT: &str =
    "(a.outcome = 'in_flight' or (a.outcome = 'retryable' and a.error_class in ('timeout', 'transport')))";

/// How an earlier call whose outcome was unknown turned out, learned by looking it up.
#[derive(Clone, Copy, Debug)]
pub enum PriorCall {
    /// VA Notify holds the notification (this id): the earlier calls are closed `sent`.
    Received(Uuid),
    /// VA Notify holds none: the earlier calls are closed `not_received`.
    NotReceived,
    /// A push: VA Notify keeps no reference to look it up by, so the earlier calls are closed
    /// `unverifiable` and the push is sent again (push is at least once, SPEC §14).
    Unverifiable,
}

/// What a finished VA Notify call returned, for `notification_attempts`.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub outcome: &'static str,
    pub http_status: Option<u16>,
    pub error_class: Option<&'static str>,
    pub va_notify_id: Option<Uuid>,
}

/// The next state of a leased row.
#[derive(Clone, Debug)]
pub enum Transition {
    /// VA Notify accepted it.
    Sent { va_notify_id: Uuid },
    /// VA Notify accepted a push: final, with no id (pushes have no callbacks).
    Pushed,
    /// VA Notify already held it from an earlier call whose answer was lost: adopted, not sent again.
    Adopted { va_notify_id: Uuid },
    /// Try again at `at`.
    Retry { at: DateTime<Utc>, reason: String },
    /// A terminal state (`failed`, `dead`, `skipped`) with its reason.
    Finish { status: Status, reason: String },
    /// No call was made (circuit open): give the try back and come back at `at`.
    Defer { at: DateTime<Utc>, reason: String },
}

impl Transition {
    /// Whether the try that led here counts toward `worker.max_attempts`. A deferral made no call;
    /// a skip or a misconfiguration is not the notification's fault either.
    fn counts_as_try(&self) -> bool {
        match self {
            // The lookup is not a send; the earlier call it resolved was counted when it was made.
            Self::Defer { .. } | Self::Adopted { .. } => false,
            // Skipped (an answer about the person) and suppressed (a toggle) are not VA Notify's doing.
            Self::Finish { status, .. } => !matches!(status, Status::Skipped | Status::Suppressed),
            _ => true,
        }
    }
}

/// How a transition changes the notification row.
pub(crate) struct RowChange<'a> {
    /// The new status; `defer` means "queued or retry_wait, whichever the row was" (see the SQL).
    status: &'a str,
    reason: Option<&'a str>,
    next_attempt_at: Option<DateTime<Utc>>,
    va_notify_id: Option<Uuid>,
    /// -1 gives the try back (it did not count toward `worker.max_attempts`).
    attempts_delta: i32,
}

impl Transition {
    fn row_change(&self) -> RowChange<'_> {
        let (status, reason, next_attempt_at, va_notify_id) = match self {
            Self::Sent { va_notify_id } => ("sent", None, None, Some(*va_notify_id)),
            Self::Pushed => ("sent", Some("push_accepted"), None, None),
            Self::Adopted { va_notify_id } => ("sent", Some("reconciled"), None, Some(*va_notify_id)),
            Self::Retry { at, reason } => ("retry_wait", Some(reason.as_str()), Some(*at), None),
            Self::Finish { status, reason } => (status.as_str(), Some(reason.as_str()), None, None),
            Self::Defer { at, reason } => ("defer", Some(reason.as_str()), Some(*at), None),
        };
        let attempts_delta = if self.counts_as_try() { 0 } else { -1 };
        RowChange { status, reason, next_attempt_at, va_notify_id, attempts_delta }
    }
}

/// The finish statement's text (`sql/finish.sql`): writes outcomes, fenced by lease tokens and by the
/// lifecycle (a row must still be in [`lifecycle::OUTCOME_FROM`]): each row and its attempt record
/// change together, in one statement for any number of rows. `outcome` null means no VA Notify call
/// was made (the in-flight record is then removed); `prior_outcome` closes earlier calls whose outcome
/// was unknown. Returns the ids whose lease was still held (those written).
#[cfg(test)]
const FINISH_SQL: &str = include_str!("sql/finish.sql");

/// Writes the outcome of one try (`sql/finish.sql`). Returns false if the lease was lost
/// (another worker reclaimed the row); nothing is written then and the caller drops its result.
#[tracing::instrument(skip_all, fields(notification_id = %row.id))]
pub async fn finish_try(
    pool: &PgPool,
    row: &Claimed,
    call: Option<&CallRecord>,
    transition: &Transition,
    prior: Option<PriorCall>,
) -> Result<bool, sqlx::Error> {
    let change = transition.row_change();
    let (prior_outcome, prior_id) = prior_columns(prior);
    let written: Vec<Uuid> = sqlx::query_file_scalar!(
        "src/outbox/sql/finish.sql",
        &[row.id] as &[Uuid],
        &[row.lease_token] as &[Uuid],
        &[change.status] as &[&str],
        &[change.reason] as &[Option<&str>],
        &[change.next_attempt_at] as &[Option<DateTime<Utc>>],
        &[change.va_notify_id] as &[Option<Uuid>],
        &[change.attempts_delta] as &[i32],
        &[row.attempts] as &[i32],
        &[call.map(|c| c.outcome)] as &[Option<&str>],
        &[call.and_then(|c| c.http_status.map(i32::from))] as &[Option<i32>],
        &[call.and_then(|c| c.error_class)] as &[Option<&str>],
        &[call.and_then(|c| c.va_notify_id)] as &[Option<Uuid>],
        &[prior_outcome] as &[Option<&str>],
        &[prior_id] as &[Option<Uuid>],
        &lifecycle::names(&lifecycle::OUTCOME_FROM) as &[&str],
    )
    .fetch_all(pool)
    .await?;
    Ok(!written.is_empty())
}

/// Records the template a leased email row's send uses (`None`: as requested), before the call, fenced
/// by the lease like every worker write. Written per send, so a resend records its own choice.
pub(crate) async fn record_sent_template(
    pool: &PgPool,
    row: &Claimed,
    sent_template_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update notifications set sent_template_id = $3 where id = $1 and lease_token = $2",
        row.id,
        row.lease_token,
        sent_template_id.map(|id| id.to_string()),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The `prior_outcome` and `prior_va_notify_id` inputs of the finish statement.
fn prior_columns(prior: Option<PriorCall>) -> (Option<&'static str>, Option<Uuid>) {
    match prior {
        Some(PriorCall::Received(id)) => (Some("sent"), Some(id)),
        Some(PriorCall::NotReceived) => (Some("not_received"), None),
        Some(PriorCall::Unverifiable) => (Some("unverifiable"), None),
        None => (None, None),
    }
}

/// Rows waiting for delivery by state, and the age of the oldest due one. Walks only the small
/// partial index of pending rows, so it is cheap to run on every scrape.
pub async fn queue_depth(pool: &PgPool) -> Result<(Vec<(String, i64)>, f64), sqlx::Error> {
    let depth = sqlx::query_file!("src/outbox/sql/queue_depth.sql").fetch_all(pool).await?;
    let depth = depth.into_iter().map(|r| (r.status, r.count)).collect();
    let oldest =
        sqlx::query_file_scalar!("src/outbox/sql/oldest_due.sql", &CHANNELS as &[&str]).fetch_one(pool).await?;
    Ok((depth, oldest.unwrap_or(0.0).max(0.0)))
}

/// The channel of a notification (one of [`CHANNELS`]), or `None` when no such row exists (retention
/// deleted it, or it never was ours). The click tracker labels its counters with it: the label's values
/// are this module's constants, never text from the database.
pub async fn channel_of(pool: &PgPool, id: Uuid) -> Result<Option<&'static str>, sqlx::Error> {
    let Some(channel) =
        sqlx::query_scalar!("select channel from notifications where id = $1", id).fetch_optional(pool).await?
    else {
        return Ok(None);
    };
    let known = CHANNELS.into_iter().find(|c| *c == channel);
    known.map(Some).ok_or_else(|| sqlx::Error::Decode(format!("unknown channel {channel}").into()))
}

/// The queue gauges' statements, for the tests that pin them to the lifecycle.
#[cfg(test)]
const QUEUE_SQL: [&str; 2] = [include_str!("sql/queue_depth.sql"), include_str!("sql/oldest_due.sql")];

fn pg_interval(d: Duration) -> sqlx::postgres::types::PgInterval {
    // Whole microseconds, never a zero interval for a non-zero duration: a zero duplicate window would
    // silently turn the duplicate check off. The durations come from configuration, whose ranges
    // (`Config::validate`) are far inside an i64 of microseconds; saturating only guards the type.
    let microseconds = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    sqlx::postgres::types::PgInterval { months: 0, days: 0, microseconds }
}

#[cfg(test)]
mod tests {
    use super::lifecycle::{PENDING, sql_list};
    use super::{CLAIM_SQL, FINISH_SQL, IN_DOUBT_ATTEMPT, QUEUE_SQL};

    #[test]
    fn statements_on_the_due_index_spell_pending_literally() {
        // The planner proves the partial index predicate only from the same literal list.
        let predicate = format!("status in {}", sql_list(&PENDING));
        for sql in [CLAIM_SQL].iter().chain(&QUEUE_SQL) {
            assert!(sql.contains(&predicate), "{sql}");
        }
    }

    #[test]
    fn claim_and_finish_agree_on_calls_in_doubt() {
        for sql in [CLAIM_SQL, FINISH_SQL] {
            assert!(sql.contains(IN_DOUBT_ATTEMPT), "{sql}");
        }
    }
}
