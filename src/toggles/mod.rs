//! Feature toggles, Flipper-compatible (SPEC §4).
//!
//! Gates live in Flipper's own tables; evaluation reads an in-memory [`Snapshot`] so the request
//! path never queries for a toggle. The snapshot is reloaded on every `ebg_toggles_changed`
//! notification (a trigger on the tables fires it, whoever writes) and on a short timer as a fallback.

mod gates;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

pub use gates::{Gates, actor_bucket, actor_in_percentage, format_percentage, parse_percentage};

use crate::metrics as m;

/// The toggle that gates `send_email`.
pub const EMAILS_ENABLED: &str = "event_bus_gateway_emails_enabled";

/// Features this service uses; registered (off) at startup when missing.
pub const KNOWN_FEATURES: &[&str] = &[EMAILS_ENABLED];

/// Postgres channel the toggle tables' triggers notify.
const CHANGED_CHANNEL: &str = "ebg_toggles_changed";

/// Every feature's gates at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub features: HashMap<String, Gates>,
}

/// Shared, cheaply cloned handle to the current toggle snapshot.
#[derive(Clone)]
pub struct Toggles {
    current: Arc<RwLock<Arc<Snapshot>>>,
    pool: PgPool,
}

impl Toggles {
    /// Loads the first snapshot. Fails if the tables cannot be read: serving with unknown toggles
    /// would silently suppress (or send) mail.
    pub async fn load(pool: PgPool) -> Result<Self, sqlx::Error> {
        let snapshot = read_snapshot(&pool).await?;
        Ok(Self { current: Arc::new(RwLock::new(Arc::new(snapshot))), pool })
    }

    /// Registers the features this service uses, off, if they are not there yet.
    pub async fn register_known_features(pool: &PgPool) -> Result<(), sqlx::Error> {
        for key in KNOWN_FEATURES {
            sqlx::query("insert into flipper_features (key) values ($1) on conflict (key) do nothing")
                .bind(key)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// The snapshot evaluation reads now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc, which cannot leave it torn.
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `feature` is enabled for `actor`; unknown features are off.
    pub fn is_enabled(&self, feature: &str, actor: &str) -> bool {
        let snapshot = self.snapshot();
        let enabled = snapshot
            .features
            .get(feature)
            .is_some_and(|gates| gates.is_open_for(feature, Some(actor), rand::random::<f64>));
        metrics::counter!(m::TOGGLE_EVALUATIONS, "feature" => feature_label(feature), "result" => if enabled { "enabled" } else { "disabled" })
            .increment(1);
        enabled
    }

    /// Reloads the snapshot from the database now.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        let snapshot = read_snapshot(&self.pool).await?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        Ok(())
    }

    /// Keeps the snapshot fresh until `cancel` fires: reloads on every change notification and
    /// every `interval` regardless, so a lost notification delays a change by at most `interval`.
    pub async fn watch(self, interval: Duration, cancel: CancellationToken) {
        let mut listener = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
                received = recv(&mut listener) => {
                    if let Err(e) = received {
                        tracing::warn!(error = %e, "toggle change listener lost; reconnecting");
                        listener = None;
                    }
                }
            }
            if let Err(e) = self.refresh().await {
                metrics::counter!(m::TOGGLE_REFRESH_FAILURES).increment(1);
                tracing::warn!(error = %e, "toggle snapshot refresh failed; serving the previous snapshot");
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(CHANGED_CHANNEL).await.ok()?;
        Some(listener)
    }
}

/// Waits for the next notification; never resolves when there is no listener (the timer covers it).
async fn recv(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(l) => l.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// Metric label for a feature: known names as they are, anything else folded to `other`.
fn feature_label(feature: &str) -> &'static str {
    KNOWN_FEATURES.iter().copied().find(|k| *k == feature).unwrap_or("other")
}

async fn read_snapshot(pool: &PgPool) -> Result<Snapshot, sqlx::Error> {
    let keys: Vec<String> = sqlx::query_scalar("select key from flipper_features").fetch_all(pool).await?;
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("select feature_key, key, value from flipper_gates").fetch_all(pool).await?;
    let mut features: HashMap<String, Gates> = keys.into_iter().map(|k| (k, Gates::default())).collect();
    for (feature, gate, value) in rows {
        // Flipper also reads gates of features missing from flipper_features; so do we.
        let gates = features.entry(feature).or_default();
        let value = value.unwrap_or_default();
        match gate.as_str() {
            "boolean" => gates.boolean = value == "true",
            "actors" => {
                gates.actors.insert(value);
            }
            "percentage_of_actors" => gates.percentage_of_actors = parse_percentage(&value).unwrap_or(0.0),
            "percentage_of_time" => gates.percentage_of_time = parse_percentage(&value).unwrap_or(0.0),
            // Groups and expressions need Ruby code to evaluate; they stay closed here.
            _ => {}
        }
    }
    Ok(Snapshot { features })
}
