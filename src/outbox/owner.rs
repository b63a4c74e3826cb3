//! A worker process's identity in the database: a random id held as a session-level advisory lock
//! on a connection of its own for as long as the process lives. Claims record it on the rows they
//! lease (`lease_owner`); a claimer treats rows whose owner's lock is free as abandoned and takes
//! them at once, so a crashed process's rows do not wait a whole `worker.lease_seconds`.
//!
//! If the lock's connection is lost, the process records no owner on new claims (their leases then
//! expire the ordinary way) until it has reconnected and locked again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

/// First key of the two-key advisory lock space owner ids live in ("EBG\x01").
pub const OWNER_LOCK_CLASS: i32 = 0x4542_4701;
/// How often the lock's connection is checked.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Pause before reconnecting after the lock's connection failed.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// Bound on connecting and locking, and on each check: a database that hangs must not stall the loop.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The id this process records on the rows it leases; 0 while it holds no lock.
#[derive(Clone, Default)]
pub struct Owner(Arc<AtomicI32>);

impl Owner {
    /// The id to record on a claim, if the lock is held now.
    pub fn current(&self) -> Option<i32> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    /// Takes a lock (waiting until the database answers or `cancel` fires), then keeps it in the
    /// background until `cancel` fires; returns once the first lock is held (or on cancel).
    pub async fn hold(&self, options: PgConnectOptions, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let first = tokio::select! {
            conn = lock_new(&options, self) => conn,
            () = cancel.cancelled() => None,
        };
        // Not holding a lock only means plain lease expiry for our rows; the loop starts either way.
        let owner = self.clone();
        tokio::spawn(async move {
            let mut conn = first;
            loop {
                match conn.take() {
                    Some(mut held) => {
                        tokio::select! {
                            () = cancel.cancelled() => {
                                let _ = held.close().await;
                                owner.0.store(0, Ordering::Release);
                                return;
                            }
                            () = tokio::time::sleep(CHECK_EVERY) => {}
                        }
                        if matches!(tokio::time::timeout(STEP_TIMEOUT, held.ping()).await, Ok(Ok(()))) {
                            conn = Some(held);
                        } else {
                            owner.0.store(0, Ordering::Release);
                            tracing::warn!("lost the worker's owner lock connection; reconnecting");
                        }
                    }
                    None => {
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(RECONNECT_AFTER) => {}
                        }
                        conn = lock_new(&options, &owner).await;
                    }
                }
            }
        })
    }
}

/// Connects and locks a fresh random id; `None` if the database cannot be reached now.
async fn lock_new(options: &PgConnectOptions, owner: &Owner) -> Option<PgConnection> {
    tokio::time::timeout(STEP_TIMEOUT, try_lock_new(options, owner)).await.unwrap_or_else(|_| {
        tracing::warn!("timed out taking the worker's owner lock");
        None
    })
}

async fn try_lock_new(options: &PgConnectOptions, owner: &Owner) -> Option<PgConnection> {
    let mut conn = match options.connect().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect for the worker's owner lock");
            return None;
        }
    };
    // Ids are positive so they compare equal as oid (pg_locks.objid) and as integer.
    for _ in 0..8 {
        let id = rand::random::<i32>().checked_abs().unwrap_or(1).max(1);
        let locked = sqlx::query_scalar!(r#"select pg_try_advisory_lock($1, $2) as "locked!""#, OWNER_LOCK_CLASS, id)
            .fetch_one(&mut conn)
            .await;
        match locked {
            Ok(true) => {
                owner.0.store(id, Ordering::Release);
                tracing::info!(owner = id, "worker owner lock held");
                return Some(conn);
            }
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the worker's owner lock");
                return None;
            }
        }
    }
    None
}
