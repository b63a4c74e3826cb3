//! Deleting old notifications for [`crate::retention`] (their attempts go with them by cascade).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::lifecycle::{self, PENDING};

/// Deletes at most `batch` notifications created before `cutoff`; returns how many. Rows still
/// waiting for delivery are never deleted, however old: that would lose mail.
pub async fn purge_notifications(pool: &PgPool, cutoff: DateTime<Utc>, batch: u32) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "delete from notifications where id in
             (select id from notifications where created_at < $1 and status <> all($3) limit $2)",
        cutoff,
        i64::from(batch),
        &lifecycle::names(&PENDING) as &[&str],
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
