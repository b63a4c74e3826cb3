//! Feature toggles, Flipper-compatible (SPEC §4).
//!
//! Gates live in Flipper's own tables; evaluation reads an in-memory [`Snapshot`] so the request
//! path never queries for a toggle. The snapshot is reloaded on every `ebg_toggles_changed`
//! notification (a trigger on the tables fires it, whoever writes) and on a short timer as a fallback.
//! Writes go through [`store`], which records each one in the audit log; [`release`] queues mail that
//! was suppressed while a feature was off.

mod gates;
pub mod release;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

pub use gates::{Gates, actor_bucket, actor_in_percentage, format_percentage, parse_percentage};

use crate::metrics as m;

/// The toggle that gates `send_email` (and the email part of `send_notifications`); actor: participant id.
pub const EMAILS_ENABLED: &str = "event_bus_gateway_emails_enabled";
/// The toggle that gates SMS (vets-api's features.yml name); actor: ICN.
pub const SMS_ENABLED: &str = "event_bus_gateway_letter_ready_sms_notifications";
/// The toggle that gates push (vets-api's features.yml name); actor: ICN.
pub const PUSH_ENABLED: &str = "event_bus_gateway_letter_ready_push_notifications";

/// Whose id a feature's actor gates and percentage of actors are evaluated for. Part of a feature's
/// registration, so percentage-of-actors puts a Veteran in the cohort vets-api's Flipper would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorKind {
    /// The BGS participant id (from the token): known at accept, so decided there.
    ParticipantId,
    /// The plain ICN (no `^NI^200M^USVHA^P`): known only after MPI, so decided by the worker.
    Icn,
}

/// A feature this service uses: its key, the channel it gates and its actor kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    pub key: &'static str,
    pub channel: &'static str,
    pub actor: ActorKind,
}

/// Every feature this service uses, with its registration; registered (off) at startup when missing.
pub const REGISTRATIONS: &[Registration] = &[
    Registration { key: EMAILS_ENABLED, channel: crate::outbox::CHANNEL_EMAIL, actor: ActorKind::ParticipantId },
    Registration { key: SMS_ENABLED, channel: crate::outbox::CHANNEL_SMS, actor: ActorKind::Icn },
    Registration { key: PUSH_ENABLED, channel: crate::outbox::CHANNEL_PUSH, actor: ActorKind::Icn },
    // Not a gate: picks the email template (CHANNELS.md §6). After email's gate, so `feature_for_channel` finds that.
    Registration {
        key: crate::notify::templates::UNIVERSAL_LINK_FEATURE,
        channel: crate::outbox::CHANNEL_EMAIL,
        actor: ActorKind::ParticipantId,
    },
];

/// The keys of [`REGISTRATIONS`].
pub const KNOWN_FEATURES: &[&str] =
    &[EMAILS_ENABLED, SMS_ENABLED, PUSH_ENABLED, crate::notify::templates::UNIVERSAL_LINK_FEATURE];

/// The registration of `feature`, if this service uses it.
pub fn registration(feature: &str) -> Option<&'static Registration> {
    REGISTRATIONS.iter().find(|r| r.key == feature)
}

/// The feature gating `channel` (its first registration; the universal-link feature comes after email's gate).
pub fn feature_for_channel(channel: &str) -> Option<&'static Registration> {
    REGISTRATIONS.iter().find(|r| r.channel == channel)
}

/// The registration of `feature` if it is the gate of its channel: the feature a release of that channel's
/// suppressed notifications decides with. Registered features that gate nothing (the universal-link
/// feature picks a template) and unknown ones are `None`.
pub fn gate(feature: &str) -> Option<&'static Registration> {
    registration(feature).filter(|r| feature_for_channel(r.channel).is_some_and(|gate| gate.key == r.key))
}

/// The features [`gate`] accepts, for error messages.
pub fn gates() -> impl Iterator<Item = &'static str> {
    REGISTRATIONS.iter().filter(|r| gate(r.key).is_some()).map(|r| r.key)
}

/// Postgres channel the toggle tables' triggers notify.
const CHANGED_CHANNEL: &str = "ebg_toggles_changed";

/// A refresh that takes longer than this counts as failed, so a hung query cannot freeze the
/// staleness gauge while the snapshot silently ages.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// One feature's evaluable state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeatureToggle {
    /// Flipper's gates.
    pub gates: Gates,
    /// Kill switch: when set the feature is off for everyone, whatever the gates say.
    pub paused: bool,
}

impl FeatureToggle {
    /// Whether the feature is on for `actor`; `random` feeds the percentage-of-time gate.
    pub fn is_open_for(&self, feature_key: &str, actor: Option<&str>, random: impl FnOnce() -> f64) -> bool {
        !self.paused && self.gates.is_open_for(feature_key, actor, random)
    }

    /// The rollout stage's percentage, as the report defines it: 0 when paused, 100 when the boolean
    /// gate is on, else `percentage_of_actors` (individual actors and percentage of time are not a stage).
    pub fn effective_percentage(&self) -> f64 {
        if self.paused {
            0.0
        } else if self.gates.boolean {
            100.0
        } else {
            self.gates.percentage_of_actors
        }
    }
}

/// Every feature's gates and kill switch at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub features: HashMap<String, FeatureToggle>,
}

/// Shared, cheaply cloned handle to the current toggle snapshot.
#[derive(Clone)]
pub struct Toggles {
    /// The installed snapshot and the ticket of the refresh that read it.
    current: Arc<RwLock<(u64, Arc<Snapshot>)>>,
    /// Handed out when a refresh starts reading. Refreshes overlap (the watcher, and a handler right
    /// after its own write); a snapshot is installed only if no later-started read was installed
    /// already, so an older read can never overwrite a newer one.
    tickets: Arc<AtomicU64>,
    /// When the snapshot was last loaded successfully (the staleness gauge is measured from it).
    refreshed_at: Arc<Mutex<Instant>>,
    pool: PgPool,
}

impl Toggles {
    /// Loads the first snapshot. Fails if the tables cannot be read: serving with unknown toggles
    /// would silently suppress (or send) mail.
    pub async fn load(pool: PgPool) -> Result<Self, sqlx::Error> {
        let snapshot = read_snapshot(&pool).await?;
        metrics::gauge!(m::TOGGLE_SNAPSHOT_AGE).set(0.0);
        publish_percentages(&snapshot);
        Ok(Self {
            current: Arc::new(RwLock::new((0, Arc::new(snapshot)))),
            tickets: Arc::new(AtomicU64::new(0)),
            refreshed_at: Arc::new(Mutex::new(Instant::now())),
            pool,
        })
    }

    /// Registers the features this service uses, off, if they are not there yet.
    pub async fn register_known_features(pool: &PgPool) -> Result<(), sqlx::Error> {
        for key in KNOWN_FEATURES {
            sqlx::query!("insert into flipper_features (key) values ($1) on conflict (key) do nothing", key)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// The snapshot evaluation reads now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc, which cannot leave it torn.
        self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// Whether `feature` is enabled for `actor`; unknown features are off.
    pub fn is_enabled(&self, feature: &str, actor: &str) -> bool {
        let snapshot = self.snapshot();
        let enabled = snapshot
            .features
            .get(feature)
            .is_some_and(|toggle| toggle.is_open_for(feature, Some(actor), rand::random::<f64>));
        metrics::counter!(m::TOGGLE_EVALUATIONS, "feature" => feature_label(feature), "result" => if enabled { "enabled" } else { "disabled" })
            .increment(1);
        enabled
    }

    /// Whether `feature` is off whoever asks: paused, or no gate set (Flipper's `off`). The worker asks this
    /// before an ICN-keyed feature's MPI look-up, so a channel nobody has yet is decided without asking MPI
    /// about anyone. Counted as one `disabled` evaluation when it is.
    pub fn is_off_for_everyone(&self, feature: &str) -> bool {
        let off = self.snapshot().features.get(feature).is_none_or(|t| t.paused || t.gates.state() == "off");
        if off {
            metrics::counter!(m::TOGGLE_EVALUATIONS, "feature" => feature_label(feature), "result" => "disabled")
                .increment(1);
        }
        off
    }

    /// Reloads the snapshot from the database now.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let snapshot = read_snapshot(&self.pool).await?;
        {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            if ticket > current.0 {
                publish_percentages(&snapshot);
                *current = (ticket, Arc::new(snapshot));
            }
        }
        *self.refreshed_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        metrics::gauge!(m::TOGGLE_SNAPSHOT_AGE).set(0.0);
        Ok(())
    }

    /// Applies one change through [`store::apply`] (gates and audit row in one transaction), then
    /// refreshes this replica's snapshot at once; the others hear about it through NOTIFY. The one write
    /// path of the Flipper API, the admin routes and the console.
    pub async fn apply(
        &self,
        feature: &str,
        change: &store::Change,
        ctx: &store::AuditContext,
    ) -> Result<store::FeatureRecord, store::StoreError> {
        let record = store::apply(&self.pool, feature, change, ctx).await?;
        self.refresh_after_write().await;
        Ok(record)
    }

    /// After a committed toggle write (by [`Toggles::apply`], or inside a rollout override's
    /// transaction): reloads this replica's snapshot now. A failure is logged, not returned: the write
    /// stands, and the watcher reloads within the refresh interval.
    pub async fn refresh_after_write(&self) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "toggle snapshot refresh after a write failed");
        }
    }

    /// Time since the snapshot was last loaded successfully.
    pub fn snapshot_age(&self) -> Duration {
        self.refreshed_at.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
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
            match tokio::time::timeout(REFRESH_TIMEOUT, self.refresh()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    metrics::counter!(m::TOGGLE_REFRESH_FAILURES).increment(1);
                    tracing::warn!(error = %e, "toggle snapshot refresh failed; serving the previous snapshot");
                }
                Err(_) => {
                    metrics::counter!(m::TOGGLE_REFRESH_FAILURES).increment(1);
                    tracing::warn!("toggle snapshot refresh timed out; serving the previous snapshot");
                }
            }
            // Set on every pass, success or not, so a stale snapshot shows as a growing age.
            metrics::gauge!(m::TOGGLE_SNAPSHOT_AGE).set(self.snapshot_age().as_secs_f64());
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let listen = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(CHANGED_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listen.await {
            Ok(listener) => Some(listener),
            Err(e) => {
                // Changes still arrive through the periodic refresh, only later; say so.
                tracing::warn!(error = %e, "cannot listen for toggle changes; relying on the periodic refresh");
                None
            }
        }
    }
}

/// Waits for the next notification; never resolves when there is no listener (the timer covers it).
async fn recv(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(l) => l.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// Sets `ebg_toggle_percentage` for every feature this service uses (a bounded label set); a feature
/// missing from the tables is off, so 0.
fn publish_percentages(snapshot: &Snapshot) {
    for feature in KNOWN_FEATURES {
        let percentage = snapshot.features.get(*feature).map_or(0.0, FeatureToggle::effective_percentage);
        metrics::gauge!(m::TOGGLE_PERCENTAGE, "feature" => *feature).set(percentage);
    }
}

/// Metric label for a feature: known names as they are, anything else folded to `other`.
fn feature_label(feature: &str) -> &'static str {
    KNOWN_FEATURES.iter().copied().find(|k| *k == feature).unwrap_or("other")
}

async fn read_snapshot(pool: &PgPool) -> Result<Snapshot, sqlx::Error> {
    let features = store::all_features(pool)
        .await?
        .into_iter()
        .map(|record| {
            let toggle = FeatureToggle { gates: record.gates(), paused: record.paused };
            (record.key, toggle)
        })
        .collect();
    Ok(Snapshot { features })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toggle(boolean: bool, percentage_of_actors: f64, paused: bool) -> FeatureToggle {
        FeatureToggle { gates: Gates { boolean, percentage_of_actors, ..Gates::default() }, paused }
    }

    #[test]
    fn each_channel_has_one_gate_and_the_universal_link_feature_is_none() {
        assert_eq!(gates().collect::<Vec<_>>(), [EMAILS_ENABLED, SMS_ENABLED, PUSH_ENABLED]);
        assert_eq!(gate(SMS_ENABLED).map(|r| (r.channel, r.actor)), Some((crate::outbox::CHANNEL_SMS, ActorKind::Icn)));
        assert!(gate(crate::notify::templates::UNIVERSAL_LINK_FEATURE).is_none());
        assert!(gate("some_other_flipper_feature").is_none());
    }

    #[test]
    fn effective_percentage_is_the_report_stage_percentage() {
        assert_eq!(toggle(false, 0.0, false).effective_percentage(), 0.0);
        assert_eq!(toggle(false, 25.0, false).effective_percentage(), 25.0);
        assert_eq!(toggle(true, 25.0, false).effective_percentage(), 100.0);
        assert_eq!(toggle(true, 25.0, true).effective_percentage(), 0.0);
        assert_eq!(toggle(false, 2.5, true).effective_percentage(), 0.0);
    }
}
