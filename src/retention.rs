//! Data retention: notifications, their attempts, callbacks and clicks older than `retention.days` are
//! deleted by a background job, in batches of `retention.batch_size` rows per statement so no statement
//! holds many locks or runs long, and the job never competes with the hot path for long.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::metrics as m;

/// Rows deleted by one purge, per table (attempts go with their notification by cascade).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub events: u64,
    pub clicks: u64,
    pub notifications: u64,
}

/// The tables in purge order: events and clicks first, then the notifications they hang off.
const TABLES: [&str; 3] = ["notification_events", "clicks", "notifications"];

/// One batch delete from `table`: picks at most `batch` old rows through an index on the age column;
/// returns the rows deleted. Notifications are deleted by [`crate::outbox::purge`], their only writer.
async fn purge_batch(pool: &PgPool, table: &str, cutoff: DateTime<Utc>, batch: u32) -> Result<u64, sqlx::Error> {
    let limit = i64::from(batch);
    let done = match table {
        "notification_events" => sqlx::query!(
            "delete from notification_events where id in
                 (select id from notification_events where received_at < $1 limit $2)",
            cutoff,
            limit
        )
        .execute(pool)
        .await?
        .rows_affected(),
        "clicks" => sqlx::query!(
            "delete from clicks where notification_id in
                 (select notification_id from clicks where last_at < $1 limit $2)",
            cutoff,
            limit
        )
        .execute(pool)
        .await?
        .rows_affected(),
        _ => crate::outbox::purge::purge_notifications(pool, cutoff, batch).await?,
    };
    Ok(done)
}

impl Purged {
    /// Rows deleted in all tables.
    pub fn total(&self) -> u64 {
        self.events + self.clicks + self.notifications
    }
}

/// Deletes everything older than `cutoff`, `batch` rows per statement, until nothing is left.
pub async fn purge_before(pool: &PgPool, cutoff: DateTime<Utc>, batch: u32) -> Result<Purged, sqlx::Error> {
    purge_before_with(pool, cutoff, batch, |_| {}).await
}

/// [`purge_before`], telling `on_batch` the running totals after each statement (the CLI's progress).
#[tracing::instrument(skip_all, fields(%cutoff, batch))]
pub async fn purge_before_with(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: u32,
    mut on_batch: impl FnMut(&Purged),
) -> Result<Purged, sqlx::Error> {
    let mut purged = Purged::default();
    for table in TABLES {
        loop {
            let deleted = purge_batch(pool, table, cutoff, batch).await?;
            metrics::counter!(m::RETENTION_DELETED, "table" => table).increment(deleted);
            match table {
                "notification_events" => purged.events += deleted,
                "clicks" => purged.clicks += deleted,
                _ => purged.notifications += deleted,
            }
            on_batch(&purged);
            if deleted < u64::from(batch) {
                break;
            }
            // Let other work at the pool between batches.
            tokio::task::yield_now().await;
        }
    }
    Ok(purged)
}

/// One purge with the configured retention.
pub async fn purge_once(pool: &PgPool, config: &RetentionConfig) -> Result<Purged, sqlx::Error> {
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(config.days));
    purge_before(pool, cutoff, config.batch_size).await
}

/// Purges every `retention.interval_seconds` until `cancel` fires.
pub async fn run(pool: PgPool, config: RetentionConfig, cancel: CancellationToken) {
    let interval = config.interval();
    loop {
        match purge_once(&pool, &config).await {
            Ok(p) if p != Purged::default() => tracing::info!(
                events = p.events,
                clicks = p.clicks,
                notifications = p.notifications,
                "retention purge deleted old rows"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention purge failed; will try again"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
