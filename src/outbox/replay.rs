//! Requeueing notifications that ended `failed` or `dead` once their cause is fixed (the `replay`
//! verb and the console), and the list operators choose them from.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Which ended notifications to requeue.
#[derive(Clone, Debug)]
pub struct ReplayFilter {
    /// `failed` or `dead`.
    pub status: String,
    /// Only rows created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only these ids (empty: any).
    pub ids: Vec<Uuid>,
}

/// The states a replay may requeue.
pub const REPLAYABLE: [&str; 2] = ["failed", "dead"];

/// Requeues the matching rows (or, with `dry_run`, only counts them); returns how many.
///
/// The cause was fixed, so each row gets a full retry budget again: the budget counts tries since
/// `attempts_before_send`. `attempts` itself keeps growing, so attempt records never collide.
pub async fn replay(pool: &PgPool, filter: &ReplayFilter, dry_run: bool) -> Result<i64, sqlx::Error> {
    let matching = "status = $1 and ($2::timestamptz is null or created_at >= $2)
                    and (cardinality($3::uuid[]) = 0 or id = any($3))";
    let sql = if dry_run {
        format!("select count(*) from notifications where {matching}")
    } else {
        format!(
            "with r as (update notifications set status = 'queued', status_reason = 'replayed',
                 attempts_before_send = attempts,
                 next_attempt_at = now(), updated_at = now() where {matching} returning 1) select count(*) from r"
        )
    };
    sqlx::query_scalar(&sql).bind(&filter.status).bind(filter.since).bind(&filter.ids).fetch_one(pool).await
}

/// A notification's row without personal data (no participant id).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Summary {
    pub id: Uuid,
    pub status: String,
    pub status_reason: Option<String>,
    pub channel: String,
    pub template_id: Uuid,
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

/// One notification's row, without personal data.
pub async fn summary(pool: &PgPool, id: Uuid) -> Result<Option<Summary>, sqlx::Error> {
    sqlx::query_as(
        "select id, status, status_reason, channel, template_id, attempts, created_at, updated_at
         from notifications where id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}
