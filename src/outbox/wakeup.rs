//! Waking delivery loops as soon as rows are queued, on this replica and on the others.
//!
//! The accept path signals the local loop in memory. Other replicas learn through a Postgres
//! notification sent from outside the accept transaction, at most once per [`ANNOUNCE_INTERVAL`], so
//! the hot path never issues NOTIFY (its commit-time lock would serialise concurrent inserts).
//! Polling (`worker.poll_interval_ms`) stays as the fallback for anything missed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Postgres channel on which replicas announce queued rows; the payload is the sender's replica id.
const DUE_CHANNEL: &str = "ebg_notifications_due";
/// At most one announcement per replica per this interval.
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);

/// Cheaply cloned handle shared by the accept path (which wakes) and the delivery loop (which waits).
#[derive(Clone)]
pub struct Wakeup {
    inner: Arc<Inner>,
}

struct Inner {
    local: Notify,
    pool: PgPool,
    replica: String,
    last_announce: Mutex<Option<Instant>>,
}

impl Wakeup {
    pub fn new(pool: PgPool) -> Self {
        let inner =
            Inner { local: Notify::new(), pool, replica: Uuid::new_v4().to_string(), last_announce: Mutex::new(None) };
        Self { inner: Arc::new(inner) }
    }

    /// Rows were queued: wake the local loop now and tell the other replicas (debounced, without waiting).
    pub fn wake(&self) {
        self.inner.local.notify_one();
        let due = {
            let mut last = self.inner.last_announce.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= ANNOUNCE_INTERVAL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let (pool, replica) = (self.inner.pool.clone(), self.inner.replica.clone());
            tokio::spawn(async move {
                let sent = sqlx::query!("select pg_notify($1, $2)", DUE_CHANNEL, replica).execute(&pool).await;
                // A lost announcement only means the other replicas find the rows at their next poll.
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "could not announce queued notifications to other replicas");
                }
            });
        }
    }

    /// Resolves at the next wake-up (a wake-up that came while nobody waited is kept for the next waiter).
    pub async fn notified(&self) {
        self.inner.local.notified().await;
    }

    /// Relays other replicas' announcements to the local loop until `cancel` fires; reconnects on failure.
    pub async fn listen_for_peers(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                lost = self.relay() => tracing::debug!(error = %lost, "queue listener lost; polling until it reconnects"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Listens until the connection fails; returns that error.
    async fn relay(&self) -> sqlx::Error {
        let mut listener = match PgListener::connect_with(&self.inner.pool).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        if let Err(e) = listener.listen(DUE_CHANNEL).await {
            return e;
        }
        loop {
            match listener.recv().await {
                Ok(n) if n.payload() != self.inner.replica => self.inner.local.notify_one(),
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }
}
