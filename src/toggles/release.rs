//! Releasing suppressed mail (SPEC §4.4, CHANNELS.md §4): after a rollback is undone, the notifications of
//! one channel recorded as `suppressed` in a time range are queued for the Veterans that channel's gate
//! enables now, so no Veteran silently loses a letter notice.
//!
//! Decisions the spec leaves open:
//! - **The feature names the channel.** Each channel's gate (`toggles::gate`) releases that channel's
//!   rows; a feature that gates nothing (the universal-link feature, unknown ones) is refused.
//! - **ICN-keyed gates (SMS, push) ask MPI first.** The candidates are read without locks, each distinct
//!   participant is resolved through the worker's own [`Mpi`] (its cache: one lookup per person),
//!   [`RESOLVE_CONCURRENCY`] at a time, and only then are the rows locked and decided in one transaction.
//!   Rows that changed meanwhile are no longer `suppressed` and are left out; rows suppressed meanwhile are
//!   not this release's (the next one takes them). A participant MPI gives no ICN for (not found, no ICN,
//!   deceased) or cannot answer stays `suppressed`, counted in `unresolved` by reason: never released
//!   without its gate decided.
//! - **Every suppressed row of the channel is a candidate**, whatever its reason: `toggle_disabled`, and
//!   for SMS `sms_quiet_hours` (block mode). A released SMS is asked the quiet hours again by the worker
//!   before it is sent, so one released inside the window is suppressed again.
//! - **Percentage of time is not rolled.** A per-row draw would release an arbitrary sample, and each
//!   later call another one, so "releasing twice sends once" would not hold. Only a 100% time gate
//!   counts (it is on for everyone); smaller time percentages release nobody by themselves.
//! - **The duplicate rule of accept applies**, per channel. A suppressed row is not released when another
//!   row for the same participant and template within the duplicate window was or will be sent (a live
//!   row on either side of it, or an earlier row of this same release): only the first of a burst goes out.
//! - Rows left behind stay `suppressed`, untouched, so a later release (with a wider rollout) can
//!   still send them.
//! - Releases of one channel are serialised by an advisory lock and only change rows still
//!   `suppressed`, so two concurrent calls cannot queue a row twice.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{self, AuditContext};
use super::{ActorKind, FeatureToggle, Snapshot};
use crate::contacts::{Mpi, MpiError};
use crate::outbox::Requeue;

/// How many MPI lookups a release has in flight at once: enough to resolve thousands of Veterans in
/// seconds, few enough to stay a small share of MPI's load next to the workers' own lookups.
pub const RESOLVE_CONCURRENCY: usize = 8;

/// What to release.
#[derive(Clone, Debug)]
pub struct ReleaseRequest {
    /// The gate whose current state decides; its registration names the channel released.
    pub feature: String,
    /// Rows created at or after this time...
    pub from: DateTime<Utc>,
    /// ...and before this time; `None` takes everything recorded so far (a default of "now" cut to the
    /// second would miss the rows of the current second).
    pub to: Option<DateTime<Utc>>,
    /// Count only; change nothing and write no audit row.
    pub dry_run: bool,
    /// The accept path's duplicate window.
    pub duplicate_window: Duration,
}

/// Why a release did not run.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// `feature` is not the gate of a channel this service sends.
    #[error("feature must be the gate of a channel: {}", super::gates().collect::<Vec<_>>().join(", "))]
    NotAGate,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Counts of one release. `suppressed` = `released` + `still_disabled` + `duplicates` + `unresolved`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReleaseOutcome {
    pub dry_run: bool,
    /// The channel released (`email`, `sms`, `push`): the feature's.
    pub channel: String,
    /// Suppressed notifications of the channel created in the range.
    pub suppressed: u64,
    /// Queued now (or, in a dry run, that would be).
    pub released: u64,
    /// Left suppressed: the Veteran is still not enabled (or the feature is paused).
    pub still_disabled: u64,
    /// Left suppressed: another notification for the same participant and template within the
    /// duplicate window was or will be sent.
    pub duplicates: u64,
    /// Left suppressed: the gate is keyed by ICN and MPI gave none for the participant (not found, no ICN,
    /// deceased) or could not answer. Always 0 for participant-keyed gates (email).
    pub unresolved: u64,
    /// `unresolved` by reason: `person_not_found`, `no_icn`, `deceased`, or MPI's error label
    /// (`mpi_timeout`, `mpi_error_556`, ...).
    pub unresolved_reasons: BTreeMap<String, u64>,
}

struct Candidate {
    id: Uuid,
    participant_id: String,
    template_id: String,
    created_at: DateTime<Utc>,
    /// A live (not suppressed, not duplicate) row exists for the same participant and template
    /// within the window on either side.
    covered: bool,
}

/// Whose id the gate is evaluated for.
enum Actors {
    /// The row's participant id.
    Participants,
    /// The ICN MPI gave for the row's participant, or why it gave none.
    Icns(HashMap<String, Result<String, &'static str>>),
}

impl Actors {
    fn of(&self, participant_id: &str) -> Result<String, &'static str> {
        match self {
            Self::Participants => Ok(participant_id.to_owned()),
            // Every locked row was among the rows read and resolved (`lock_suppressed` is limited to their
            // ids), so a miss cannot happen; were it to, the row stays suppressed and is counted.
            Self::Icns(icns) => icns.get(participant_id).cloned().unwrap_or(Err("not_resolved")),
        }
    }
}

/// Queues the suppressed notifications of the feature's channel in the range whose Veterans `snapshot`
/// enables now; ICNs for ICN-keyed gates come from `mpi`.
#[tracing::instrument(skip_all, fields(feature = %request.feature, dry_run = request.dry_run))]
pub async fn release_suppressed(
    pool: &PgPool,
    snapshot: &Snapshot,
    mpi: &Mpi,
    request: &ReleaseRequest,
    ctx: &AuditContext,
) -> Result<ReleaseOutcome, ReleaseError> {
    let gate = super::gate(&request.feature).ok_or(ReleaseError::NotAGate)?;
    // `accept.duplicate_window_seconds` is bounded at startup, so this cannot fail for a configured
    // window; an out-of-range one is refused rather than turned into no window at all.
    let window = chrono::Duration::from_std(request.duplicate_window).map_err(|_| {
        sqlx::Error::InvalidArgument(format!("duplicate window {:?} is out of range", request.duplicate_window))
    })?;
    let toggle = snapshot.features.get(&request.feature).cloned().unwrap_or_default();

    // ICNs are resolved before any row is locked: MPI calls take seconds, row locks must not.
    let (only, actors) = match gate.actor {
        ActorKind::ParticipantId => (None, Actors::Participants),
        ActorKind::Icn => {
            let read =
                crate::outbox::release::suppressed_candidates(pool, gate.channel, request.from, request.to).await?;
            let ids: Vec<Uuid> = read.iter().map(|c| c.id).collect();
            (Some(ids), Actors::Icns(resolve_icns(mpi, read.into_iter().map(|c| c.participant_id)).await))
        }
    };

    let mut tx = pool.begin().await?;
    sqlx::query!("select pg_advisory_xact_lock(hashtextextended('ebg_release_suppressed:' || $1, 0))", gate.channel)
        .execute(&mut *tx)
        .await?;
    let rows = crate::outbox::release::lock_suppressed(
        &mut tx,
        gate.channel,
        request.from,
        request.to,
        only.as_deref(),
        request.duplicate_window,
    )
    .await?;
    let candidates = rows.into_iter().map(|r| Candidate {
        id: r.id,
        participant_id: r.participant_id,
        template_id: r.template_id,
        created_at: r.created_at,
        covered: r.covered,
    });

    let (ids, mut outcome) = select(candidates, &request.feature, &toggle, &actors, window);
    outcome.dry_run = request.dry_run;
    outcome.channel = gate.channel.to_owned();
    if request.dry_run {
        // Nothing was written; ending the transaction releases the row locks.
        tx.rollback().await?;
        return Ok(outcome);
    }

    let released = crate::outbox::requeue(&mut *tx, &ids, &Requeue::release()).await?;
    outcome.released = released.len() as u64;

    store::lock_feature(&mut tx, &request.feature).await?;
    let (_, state) = store::fetch(&mut tx, &request.feature).await?;
    let value = json!({
        "from": request.from,
        "to": request.to,
        "channel": outcome.channel,
        "suppressed": outcome.suppressed,
        "released": outcome.released,
        "still_disabled": outcome.still_disabled,
        "duplicates": outcome.duplicates,
        "unresolved": outcome.unresolved,
        "unresolved_reasons": outcome.unresolved_reasons,
    })
    .to_string();
    store::insert_audit(&mut tx, &request.feature, "release_suppressed", None, Some(&value), &state, &state, ctx)
        .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Resolves each distinct participant to its plain ICN through MPI (cached there), a bounded number at a
/// time. A participant without one maps to the bounded reason why.
async fn resolve_icns(
    mpi: &Mpi,
    participants: impl Iterator<Item = String>,
) -> HashMap<String, Result<String, &'static str>> {
    let mut distinct: Vec<String> = participants.collect();
    distinct.sort_unstable();
    distinct.dedup();
    futures::stream::iter(distinct)
        .map(|participant| async move {
            let icn = match mpi.lookup(&participant).await {
                Ok(identity) => Ok(identity.icn),
                Err(e) => {
                    if matches!(e, MpiError::Misconfigured(_)) {
                        tracing::error!(
                            reason = e.reason(),
                            "MPI client is misconfigured; release leaves the row suppressed"
                        );
                    }
                    Err(e.reason())
                }
            };
            (participant, icn)
        })
        .buffer_unordered(RESOLVE_CONCURRENCY)
        .collect()
        .await
}

/// Decides which candidates (sorted by creation time) to queue.
fn select(
    candidates: impl Iterator<Item = Candidate>,
    feature: &str,
    toggle: &FeatureToggle,
    actors: &Actors,
    window: chrono::Duration,
) -> (Vec<Uuid>, ReleaseOutcome) {
    // Deterministic: the time gate is either fully open (100%) or ignored (see the module docs). With
    // it at 0 the gate never draws; at 100 a draw of 0.0 is always inside.
    let mut effective = toggle.clone();
    effective.gates.percentage_of_time = if toggle.gates.percentage_of_time >= 100.0 { 100.0 } else { 0.0 };
    let draw = || 0.0;

    let mut outcome = ReleaseOutcome::default();
    let mut ids = Vec::new();
    let mut last_released: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    let mut enabled: HashMap<String, bool> = HashMap::new();
    for c in candidates {
        outcome.suppressed += 1;
        let actor = match actors.of(&c.participant_id) {
            Ok(actor) => actor,
            Err(reason) => {
                outcome.unresolved += 1;
                *outcome.unresolved_reasons.entry(reason.to_owned()).or_default() += 1;
                continue;
            }
        };
        let is_enabled =
            *enabled.entry(actor).or_insert_with_key(|actor| effective.is_open_for(feature, Some(actor), draw));
        if !is_enabled {
            outcome.still_disabled += 1;
            continue;
        }
        let key = (c.participant_id, c.template_id);
        let burst = last_released.get(&key).is_some_and(|at| c.created_at - *at < window);
        if c.covered || burst {
            outcome.duplicates += 1;
            continue;
        }
        last_released.insert(key, c.created_at);
        ids.push(c.id);
        outcome.released += 1;
    }
    (ids, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn candidate(participant: &str, minute: u32, covered: bool) -> Candidate {
        Candidate {
            id: Uuid::new_v4(),
            participant_id: participant.to_owned(),
            template_id: Uuid::nil().to_string(),
            created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).single().unwrap_or_default(),
            covered,
        }
    }

    fn actors(ids: &[&str]) -> FeatureToggle {
        let mut toggle = FeatureToggle::default();
        toggle.gates.actors = ids.iter().map(|s| (*s).to_owned()).collect();
        toggle
    }

    const WINDOW: chrono::Duration = chrono::Duration::minutes(10);

    #[test]
    fn only_enabled_participants_are_released() {
        let rows = vec![candidate("1", 0, false), candidate("2", 1, false)];
        let (ids, outcome) = select(rows.into_iter(), "f", &actors(&["1"]), &Actors::Participants, WINDOW);
        assert_eq!(ids.len(), 1);
        assert_eq!((outcome.suppressed, outcome.released, outcome.still_disabled), (2, 1, 1));
    }

    #[test]
    fn only_the_first_of_a_burst_is_released() {
        let rows = vec![candidate("1", 0, false), candidate("1", 5, false), candidate("1", 11, false)];
        let (ids, outcome) = select(rows.into_iter(), "f", &actors(&["1"]), &Actors::Participants, WINDOW);
        assert_eq!(ids.len(), 2, "minute 0 and minute 11 (outside the window of minute 0)");
        assert_eq!(outcome.duplicates, 1);
    }

    #[test]
    fn rows_next_to_a_sent_notification_are_duplicates() {
        let rows = vec![candidate("1", 0, true)];
        let (ids, outcome) = select(rows.into_iter(), "f", &actors(&["1"]), &Actors::Participants, WINDOW);
        assert!(ids.is_empty());
        assert_eq!(outcome.duplicates, 1);
    }

    #[test]
    fn icn_keyed_gates_are_evaluated_for_the_icn_and_unresolved_rows_are_counted_by_reason() {
        let icns = Actors::Icns(HashMap::from([
            ("1".to_owned(), Ok("1012345678V123456".to_owned())),
            ("2".to_owned(), Err("deceased")),
            ("3".to_owned(), Err("mpi_timeout")),
        ]));
        let rows = || {
            vec![candidate("1", 0, false), candidate("2", 1, false), candidate("2", 2, false), candidate("3", 3, false)]
        };
        let (ids, outcome) = select(rows().into_iter(), "f", &actors(&["1012345678V123456"]), &icns, WINDOW);
        assert_eq!(ids.len(), 1);
        assert_eq!((outcome.suppressed, outcome.released, outcome.still_disabled, outcome.unresolved), (4, 1, 0, 3));
        let reasons = BTreeMap::from([("deceased".to_owned(), 2), ("mpi_timeout".to_owned(), 1)]);
        assert_eq!(outcome.unresolved_reasons, reasons);
        // The participant id is not the actor of an ICN-keyed gate.
        let (ids, outcome) = select(rows().into_iter(), "f", &actors(&["1"]), &icns, WINDOW);
        assert!(ids.is_empty());
        assert_eq!((outcome.still_disabled, outcome.unresolved), (1, 3));
    }

    #[test]
    fn paused_features_release_nobody() {
        let mut toggle = actors(&["1"]);
        toggle.paused = true;
        let (ids, _) = select(vec![candidate("1", 0, false)].into_iter(), "f", &toggle, &Actors::Participants, WINDOW);
        assert!(ids.is_empty());
        toggle.gates.percentage_of_time = 100.0;
        let (ids, _) = select(vec![candidate("1", 0, false)].into_iter(), "f", &toggle, &Actors::Participants, WINDOW);
        assert!(ids.is_empty());
    }

    #[test]
    fn percentage_of_time_is_not_rolled() {
        let mut toggle = FeatureToggle::default();
        toggle.gates.percentage_of_time = 99.0;
        let rows: Vec<_> = (0..50).map(|i| candidate(&i.to_string(), 0, false)).collect();
        let (ids, _) = select(rows.into_iter(), "f", &toggle, &Actors::Participants, WINDOW);
        assert!(ids.is_empty());
        toggle.gates.percentage_of_time = 100.0;
        let rows: Vec<_> = (0..50).map(|i| candidate(&i.to_string(), 0, false)).collect();
        let (ids, _) = select(rows.into_iter(), "f", &toggle, &Actors::Participants, WINDOW);
        assert_eq!(ids.len(), 50);
    }
}
