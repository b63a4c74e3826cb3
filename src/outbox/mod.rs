//! The outbox: every accepted request is a row in `notifications`, and that row is also the
//! delivery queue entry (SPEC §1, §10). Workers claim due rows with `FOR UPDATE SKIP LOCKED` and a
//! lease; the lease expiry is stored as the row's `next_attempt_at`, so a crashed worker's rows simply
//! become due again.

pub mod backoff;
mod batch;
pub mod callbacks;
pub mod channel_policy;
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
#[tracing::instrument(skip_all, fields(limit))]
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
    owner: Option<i32>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(CLAIM_SQL.as_str())
        .bind(limit)
        .bind(pg_interval(lease))
        .bind(owner)
        .bind(owner::OWNER_LOCK_CLASS)
        .fetch_all(pool)
        .await
}

/// Calls whose outcome is unknown: no answer was recorded (`in_flight`), or the call timed out or lost
/// its connection after the request was sent. Kept in step with `notify::outcome_in_doubt`.
const IN_DOUBT_ATTEMPT: &str =
    "(a.outcome = 'in_flight' or (a.outcome = 'retryable' and a.error_class in ('timeout', 'transport')))";

static CLAIM_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "with live_owners as materialized (
             select l.objid::int8 as owner from pg_locks l
             where l.locktype = 'advisory' and l.classid = $4::int4::oid and l.objsubid = 2 and l.granted
               and l.database = (select oid from pg_database where datname = current_database())
         ), orphaned as (
             select id, next_attempt_at from notifications
             where status = 'sending' and lease_owner is not null and next_attempt_at > now()
               and lease_owner is distinct from $3
               and lease_owner::int8 not in (select owner from live_owners)
             limit $1
             for update skip locked
         ), due as (
             select id, next_attempt_at from notifications
             where status in {pending} and next_attempt_at <= now()
             order by next_attempt_at
             limit $1
             for update skip locked
         ), picked as (
             select id from (select id, 0 as first, next_attempt_at from orphaned
                             union all select id, 1, next_attempt_at from due) p
             order by first, next_attempt_at
             limit $1
         ), claimed as (
             update notifications n
             set status = 'sending', lease_token = gen_random_uuid(), lease_owner = $3, attempts = n.attempts + 1,
                 next_attempt_at = now() + $2, updated_at = now()
             from picked where n.id = picked.id
             returning n.id, n.channel, n.participant_id, n.template_id, n.attempts, n.lease_token, n.sends, n.attempts_before_send
         ), in_flight as (
             insert into notification_attempts (notification_id, attempt) select id, attempts from claimed
         )
         select c.*, (select max(a.started_at) from notification_attempts a
                      where a.notification_id = c.id and a.attempt > c.attempts_before_send
                        and a.attempt < c.attempts and {IN_DOUBT_ATTEMPT}) as in_doubt_since
         from claimed c",
        pending = lifecycle::sql_list(&lifecycle::PENDING),
    )
});

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

/// Writes outcomes, fenced by lease tokens: each row and its attempt record change together, in
/// one statement for any number of rows. `outcome` null means no VA Notify call was made (the
/// in-flight record is then removed); `prior_outcome` closes earlier calls whose outcome was unknown.
/// Returns the ids whose lease was still held (those written).
static FINISH_MANY_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| FINISH_MANY_TEMPLATE.replace("IN_DOUBT", IN_DOUBT_ATTEMPT));

const FINISH_MANY_TEMPLATE: &str = "
    with input as (
        select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::uuid[],
                             $7::int4[], $8::int4[], $9::text[], $10::int4[], $11::text[], $12::uuid[],
                             $13::text[], $14::uuid[])
            as i(id, lease_token, status, reason, next_attempt_at, va_notify_id, attempts_delta, attempt,
                 outcome, http_status, error_class, call_va_notify_id, prior_outcome, prior_va_notify_id)
    ), moved as (
        update notifications n set
            status = case when i.status = 'defer'
                          then (case when n.attempts > 1 then 'retry_wait' else 'queued' end) else i.status end,
            status_reason = i.reason,
            next_attempt_at = i.next_attempt_at,
            va_notify_id = coalesce(i.va_notify_id, n.va_notify_id),
            sent_at = case when i.status = 'sent' then now() else n.sent_at end,
            sends = n.sends + (case when i.status = 'sent' then 1 else 0 end),
            attempts = n.attempts + i.attempts_delta,
            lease_token = null,
            lease_owner = null,
            updated_at = now()
        from input i
        where n.id = i.id and n.lease_token = i.lease_token
        returning n.id
    ), resolved as (
        update notification_attempts a set outcome = i.prior_outcome, finished_at = coalesce(a.finished_at, now()),
            va_notify_id = coalesce(i.prior_va_notify_id, a.va_notify_id)
        from input i
        where a.notification_id = i.id and a.attempt < i.attempt and i.prior_outcome is not null
          and i.id in (select id from moved) and IN_DOUBT
    ), recorded as (
        update notification_attempts a set finished_at = now(), outcome = i.outcome, http_status = i.http_status,
            error_class = i.error_class, va_notify_id = i.call_va_notify_id
        from input i
        where a.notification_id = i.id and a.attempt = i.attempt and i.outcome is not null
          and i.id in (select id from moved)
    ), removed as (
        delete from notification_attempts a using input i
        where a.notification_id = i.id and a.attempt = i.attempt and i.outcome is null
          and i.id in (select id from moved)
    )
    select id from moved";

/// Writes the outcome of one try (see [`FINISH_MANY_SQL`]). Returns false if the lease was lost
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
    let written: Vec<Uuid> = sqlx::query_scalar(FINISH_MANY_SQL.as_str())
        .bind(vec![row.id])
        .bind(vec![row.lease_token])
        .bind(vec![change.status])
        .bind(vec![change.reason])
        .bind(vec![change.next_attempt_at])
        .bind(vec![change.va_notify_id])
        .bind(vec![change.attempts_delta])
        .bind(vec![row.attempts])
        .bind(vec![call.map(|c| c.outcome)])
        .bind(vec![call.and_then(|c| c.http_status.map(i32::from))])
        .bind(vec![call.and_then(|c| c.error_class)])
        .bind(vec![call.and_then(|c| c.va_notify_id)])
        .bind(vec![prior_outcome])
        .bind(vec![prior_id])
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
    sqlx::query("update notifications set sent_template_id = $3 where id = $1 and lease_token = $2")
        .bind(row.id)
        .bind(row.lease_token)
        .bind(sent_template_id.map(|id| id.to_string()))
        .execute(pool)
        .await?;
    Ok(())
}

/// The `prior_outcome` and `prior_va_notify_id` inputs of [`FINISH_MANY_SQL`].
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
    let depth: Vec<(String, i64)> = sqlx::query_as(QUEUE_DEPTH_SQL.as_str()).fetch_all(pool).await?;
    let oldest: Option<f64> = sqlx::query_scalar(OLDEST_DUE_SQL.as_str()).fetch_one(pool).await?;
    Ok((depth, oldest.unwrap_or(0.0).max(0.0)))
}

static QUEUE_DEPTH_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "select status, count(*) from notifications where status in {} group by status",
        lifecycle::sql_list(&lifecycle::PENDING)
    )
});

static OLDEST_DUE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "select extract(epoch from now() - min(next_attempt_at))::float8 from notifications
         where status in {} and next_attempt_at <= now()",
        lifecycle::sql_list(&lifecycle::PENDING)
    )
});

fn pg_interval(d: Duration) -> sqlx::postgres::types::PgInterval {
    // Only fails for durations with sub-microsecond precision, which config never produces.
    sqlx::postgres::types::PgInterval::try_from(d).unwrap_or_default()
}
