//! Releasing suppressed mail (SPEC §4.4): after a rollback is undone, the notifications recorded as
//! `suppressed` in a time range are queued for the participants the toggle enables now, so no Veteran
//! silently loses a letter notice.
//!
//! Decisions the spec leaves open:
//! - **Percentage of time is not rolled.** A per-row draw would release an arbitrary sample, and each
//!   later call another one, so "releasing twice sends once" would not hold. Only a 100% time gate
//!   counts (it is on for everyone); smaller time percentages release nobody by themselves.
//! - **The duplicate rule of accept applies.** A suppressed row is not released when another row for
//!   the same participant and template within the duplicate window was or will be sent (a live row on
//!   either side of it, or an earlier row of this same release): only the first of a burst goes out.
//! - Rows left behind stay `suppressed`, untouched, so a later release (with a wider rollout) can
//!   still send them.
//! - Releases are serialised by an advisory lock and only change rows still `suppressed`, so two
//!   concurrent calls cannot queue a row twice.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{self, AuditContext};
use super::{FeatureToggle, Snapshot};
use crate::outbox::{CHANNEL_EMAIL, Requeue};

/// What to release.
#[derive(Clone, Debug)]
pub struct ReleaseRequest {
    /// The feature whose current state decides (the emails toggle).
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

/// Counts of one release.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReleaseOutcome {
    pub dry_run: bool,
    /// Suppressed email notifications created in the range.
    pub suppressed: u64,
    /// Queued now (or, in a dry run, that would be).
    pub released: u64,
    /// Left suppressed: the participant is still not enabled (or the feature is paused).
    pub still_disabled: u64,
    /// Left suppressed: another notification for the same participant and template within the
    /// duplicate window was or will be sent.
    pub duplicates: u64,
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

/// Queues the suppressed notifications of the range whose participants `snapshot` enables now.
#[tracing::instrument(skip_all, fields(dry_run = request.dry_run))]
pub async fn release_suppressed(
    pool: &PgPool,
    snapshot: &Snapshot,
    request: &ReleaseRequest,
    ctx: &AuditContext,
) -> Result<ReleaseOutcome, sqlx::Error> {
    let window = chrono::Duration::from_std(request.duplicate_window).unwrap_or(chrono::Duration::zero());
    let toggle = snapshot.features.get(&request.feature).cloned().unwrap_or_default();

    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('ebg_release_suppressed', 0))")
        .execute(&mut *tx)
        .await?;
    let rows = crate::outbox::release::lock_suppressed(
        &mut tx,
        CHANNEL_EMAIL,
        request.from,
        request.to,
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

    let (ids, mut outcome) = select(candidates, &request.feature, &toggle, window);
    outcome.dry_run = request.dry_run;
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
        "suppressed": outcome.suppressed,
        "released": outcome.released,
        "still_disabled": outcome.still_disabled,
        "duplicates": outcome.duplicates,
    })
    .to_string();
    store::insert_audit(&mut tx, &request.feature, "release_suppressed", None, Some(&value), &state, &state, ctx)
        .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Decides which candidates (sorted by creation time) to queue.
fn select(
    candidates: impl Iterator<Item = Candidate>,
    feature: &str,
    toggle: &FeatureToggle,
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
        let is_enabled = *enabled
            .entry(c.participant_id.clone())
            .or_insert_with(|| effective.is_open_for(feature, Some(&c.participant_id), draw));
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
        let (ids, outcome) = select(rows.into_iter(), "f", &actors(&["1"]), WINDOW);
        assert_eq!(ids.len(), 1);
        assert_eq!((outcome.suppressed, outcome.released, outcome.still_disabled), (2, 1, 1));
    }

    #[test]
    fn only_the_first_of_a_burst_is_released() {
        let rows = vec![candidate("1", 0, false), candidate("1", 5, false), candidate("1", 11, false)];
        let (ids, outcome) = select(rows.into_iter(), "f", &actors(&["1"]), WINDOW);
        assert_eq!(ids.len(), 2, "minute 0 and minute 11 (outside the window of minute 0)");
        assert_eq!(outcome.duplicates, 1);
    }

    #[test]
    fn rows_next_to_a_sent_notification_are_duplicates() {
        let rows = vec![candidate("1", 0, true)];
        let (ids, outcome) = select(rows.into_iter(), "f", &actors(&["1"]), WINDOW);
        assert!(ids.is_empty());
        assert_eq!(outcome.duplicates, 1);
    }

    #[test]
    fn paused_features_release_nobody() {
        let mut toggle = actors(&["1"]);
        toggle.paused = true;
        let (ids, _) = select(vec![candidate("1", 0, false)].into_iter(), "f", &toggle, WINDOW);
        assert!(ids.is_empty());
        toggle.gates.percentage_of_time = 100.0;
        let (ids, _) = select(vec![candidate("1", 0, false)].into_iter(), "f", &toggle, WINDOW);
        assert!(ids.is_empty());
    }

    #[test]
    fn percentage_of_time_is_not_rolled() {
        let mut toggle = FeatureToggle::default();
        toggle.gates.percentage_of_time = 99.0;
        let rows: Vec<_> = (0..50).map(|i| candidate(&i.to_string(), 0, false)).collect();
        let (ids, _) = select(rows.into_iter(), "f", &toggle, WINDOW);
        assert!(ids.is_empty());
        toggle.gates.percentage_of_time = 100.0;
        let rows: Vec<_> = (0..50).map(|i| candidate(&i.to_string(), 0, false)).collect();
        let (ids, _) = select(rows.into_iter(), "f", &toggle, WINDOW);
        assert_eq!(ids.len(), 50);
    }
}
