//! Replay (`ebg-notify replay`): notifications that ended `failed` or `dead` are queued again after the
//! cause was fixed. The candidates are listed first and then requeued in batches, so a large replay
//! reports its progress and no statement holds many row locks for long.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Requeue, Status};

/// Which notifications to replay.
#[derive(Clone, Debug)]
pub struct ReplayFilter {
    /// `failed` or `dead`.
    pub status: String,
    /// Only rows created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only these ids (empty: any).
    pub ids: Vec<Uuid>,
}

/// The ids a replay would requeue now, oldest first.
pub async fn replay_candidates(pool: &PgPool, filter: &ReplayFilter) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select id from notifications
         where status = $1 and ($2::timestamptz is null or created_at >= $2)
               and (cardinality($3::uuid[]) = 0 or id = any($3))
         order by created_at, id",
    )
    .bind(&filter.status)
    .bind(filter.since)
    .bind(&filter.ids)
    .fetch_all(pool)
    .await
}

/// Requeues those of `ids` still in `status`; returns how many. A row that changed meanwhile (already
/// replayed by someone else) is left alone, so replaying twice queues once.
pub async fn requeue(pool: &PgPool, status: &str, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    // The cause was fixed, so the row gets a full retry budget again (see `Budget::Fresh`). A status
    // that is not replayable matches no row.
    let Some(status) = Status::parse(status) else {
        return Ok(0);
    };
    Ok(super::requeue(pool, ids, &Requeue::replay(status)).await?.len() as u64)
}

/// The states a replay may requeue.
pub const REPLAYABLE: [&str; 2] = ["failed", "dead"];

/// A notification's row without personal data (no participant id): what the console lists.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Summary {
    pub id: Uuid,
    pub status: String,
    pub status_reason: Option<String>,
    pub channel: String,
    pub template_id: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The `failed` and `dead` notifications created since `since`, newest first, at most `limit`.
pub async fn ended_since(pool: &PgPool, since: DateTime<Utc>, limit: i64) -> Result<Vec<Summary>, sqlx::Error> {
    sqlx::query_as(
        "select id, status, status_reason, channel, template_id, attempts, created_at, updated_at
         from notifications where status in ('failed', 'dead') and created_at >= $1
         order by created_at desc limit $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await
}
