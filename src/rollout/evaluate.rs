//! The evaluator: every `rollout.interval_seconds`, one replica judges each running plan's current stage
//! and acts on it.
//!
//! One evaluator at a time: [`evaluate_once`] first takes a session-level advisory lock on a connection
//! of its own and skips the pass when another replica holds it. Each plan is then decided inside one
//! transaction that locks the plan row (and the feature, as every toggle write does), so even two
//! evaluators that got past the lock could not both advance the same stage.
//!
//! The clock is a parameter: tests call [`evaluate_once`] with the time they want, and the decision's
//! time is also the audit row's, so the rollout report sees the stage boundaries the plan saw.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ACTOR, Mode, Plan, Record, RolloutError, State, audit_decision, count, lock_plan, log_decision};
use crate::report::{self, Counts, Verdict};
use crate::toggles::format_percentage;
use crate::toggles::store::{self, AuditContext, Change};

/// Key of the advisory lock that elects the one evaluating replica.
const EVALUATOR_LOCK: &str = "ebg_rollout/evaluator";

/// What the evaluator decided for a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The first stage was applied.
    Start,
    /// The stage passed: the next percentage applies.
    Advance,
    /// The last stage passed.
    Complete,
    /// The error rate broke the threshold with enough sample: the feature is paused (kill switch).
    Pause,
    /// The stage's dwell is not over yet.
    Hold,
    /// The dwell is over but the evidence is not enough to pass (too few sends, or clicks short of the
    /// criterion): wait, never pass.
    Halt,
    /// An operator changed the gates; the plan stops acting.
    Interrupted,
    /// An operator resumed a paused plan.
    Resume,
    /// An operator aborted the plan.
    Abort,
}

impl Decision {
    /// The decision's name (the `decision` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Advance => "advance",
            Self::Complete => "complete",
            Self::Pause => "pause",
            Self::Hold => "hold",
            Self::Halt => "halt",
            Self::Interrupted => "interrupted",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }

    /// The `feature_audit` operation recording it.
    pub fn audit_operation(self) -> &'static str {
        match self {
            Self::Start => "rollout_start",
            Self::Advance => "rollout_advance",
            Self::Complete => "rollout_complete",
            Self::Pause => "rollout_pause",
            Self::Hold => "rollout_hold",
            Self::Halt => "rollout_halt",
            Self::Interrupted => "rollout_interrupted",
            Self::Resume => "rollout_resume",
            Self::Abort => "rollout_abort",
        }
    }
}

/// The numbers a stage is judged on, and the thresholds: recorded with every decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evidence {
    /// 0-based stage index, and how many stages the plan has.
    pub stage: usize,
    pub stages: usize,
    pub percentage: f64,
    /// The window counted: notifications requested in `[from, to)`.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub dwell_seconds: i64,
    pub min_dwell_seconds: u64,
    pub min_sends: u64,
    pub max_error_rate: f64,
    /// failed / attempted, as in the rollout report.
    pub error_rate: Option<f64>,
    pub click_through_rate: Option<f64>,
    pub previous_click_through_rate: Option<f64>,
    pub min_ctr_ratio: Option<f64>,
    #[serde(flatten)]
    pub counts: Counts,
}

impl Evidence {
    fn new(plan: &Plan, started: DateTime<Utc>, now: DateTime<Utc>, counts: Counts) -> Option<Self> {
        let stage = plan.stage()?;
        Some(Self {
            stage: usize::try_from(plan.current_stage).ok()?,
            stages: plan.stages.len(),
            percentage: stage.percentage,
            from: started,
            to: now,
            dwell_seconds: (now - started).num_seconds(),
            min_dwell_seconds: stage.min_dwell_seconds,
            min_sends: stage.min_sends,
            max_error_rate: plan.max_error_rate,
            error_rate: counts.error_rate(),
            click_through_rate: counts.click_through_rate(),
            previous_click_through_rate: plan.previous_ctr,
            min_ctr_ratio: plan.min_ctr_ratio,
            counts,
        })
    }

    fn is_last_stage(&self) -> bool {
        self.stage + 1 >= self.stages
    }
}

/// Decides a running stage, with a fixed reason code. Pure: the unit tests state the rules.
///
/// The stage's verdict is the rollout report's ([`report::judge`] with the stage's `min_sends` as the
/// minimum sample), so the report and the plan cannot disagree about a stage:
///
/// 1. FAIL (enough sample, error rate ≥ the threshold): **pause**, even before the dwell is over: a
///    failing canary is stopped early.
/// 2. Dwell not over: **hold**.
/// 3. NOT ENOUGH DATA (too few attempted sends): **halt**; never pass. Passing also needs `min_sends`
///    sends with a final outcome (delivered or failed): a send still awaiting its delivery status is no
///    evidence of success yet, and may yet turn out a failure.
/// 4. With `min_ctr_ratio` and a previous click-through rate above 0: no deliveries to measure clicks on,
///    or a rate below ratio × previous: **halt**.
/// 5. Otherwise the stage passed: **advance**, or **complete** after the last stage.
pub fn decide(e: &Evidence) -> (Decision, &'static str) {
    let verdict = report::judge(&e.counts, e.min_sends, e.max_error_rate);
    if verdict == Verdict::Fail {
        return (Decision::Pause, "error_rate_exceeded");
    }
    if e.dwell_seconds < 0 || (e.dwell_seconds as u64) < e.min_dwell_seconds {
        return (Decision::Hold, "dwell_not_met");
    }
    if verdict == Verdict::NotEnoughData {
        return (Decision::Halt, "insufficient_sample");
    }
    let settled = e.counts.delivered + e.counts.failed;
    if u64::try_from(settled).map_or(true, |s| s < e.min_sends) {
        return (Decision::Halt, "awaiting_delivery_status");
    }
    if let (Some(ratio), Some(previous)) = (e.min_ctr_ratio, e.previous_click_through_rate) {
        if previous > 0.0 {
            match e.click_through_rate {
                None => return (Decision::Halt, "no_click_data"),
                Some(ctr) if ctr < ratio * previous => return (Decision::Halt, "ctr_below_ratio"),
                Some(_) => {}
            }
        }
    }
    if e.is_last_stage() { (Decision::Complete, "criteria_met") } else { (Decision::Advance, "criteria_met") }
}

/// One plan's decision in a pass.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub plan_id: Uuid,
    pub decision: Decision,
    pub reason: &'static str,
    /// Whether a gate was changed.
    pub applied: bool,
    /// The plan's state afterwards.
    pub state: State,
    /// The stage's numbers (`None` for a start or an interruption).
    pub evidence: Option<Evidence>,
}

/// The result of one pass.
#[derive(Clone, Debug, Default)]
pub struct EvaluationRun {
    /// Another replica held the evaluator lock: this pass did nothing.
    pub skipped: bool,
    pub outcomes: Vec<Outcome>,
    /// Plans whose evaluation failed (logged; retried on the next pass).
    pub failures: usize,
}

/// Evaluates every running plan once, as of `now`. Skips (returns `skipped`) while another replica is
/// evaluating. A plan whose evaluation fails is logged and counted, and the others still run.
pub async fn evaluate_once(pool: &PgPool, now: DateTime<Utc>) -> Result<EvaluationRun, RolloutError> {
    let Some(lock) = EvaluatorLock::try_acquire(pool).await? else {
        return Ok(EvaluationRun { skipped: true, ..EvaluationRun::default() });
    };
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "select id from rollout_plans where state in ('pending', 'running', 'halted') order by created_at, id",
    )
    .fetch_all(pool)
    .await?;
    let mut run = EvaluationRun::default();
    for id in ids {
        match evaluate_plan(pool, id, now).await {
            Ok(Some(outcome)) => run.outcomes.push(outcome),
            Ok(None) => {}
            Err(e) => {
                run.failures += 1;
                tracing::warn!(plan = %id, error = %e, "rollout plan evaluation failed; retrying on the next pass");
            }
        }
    }
    lock.release().await;
    Ok(run)
}

/// Decides one plan in one transaction; `None` when it is no longer evaluated (changed since listed).
#[tracing::instrument(skip_all, fields(plan = %id))]
async fn evaluate_plan(pool: &PgPool, id: Uuid, now: DateTime<Utc>) -> Result<Option<Outcome>, RolloutError> {
    let mut tx = pool.begin().await?;
    let Some(plan) = lock_plan(&mut tx, id).await? else { return Ok(None) };
    if !plan.state.is_evaluated() {
        return Ok(None);
    }
    let ctx = AuditContext { actor: ACTOR.to_owned(), reason: None, request_id: None };
    // Same lock order as an override (plan row, then feature), so the two cannot deadlock.
    store::lock_feature(&mut tx, &plan.feature).await?;

    // In advise mode the operator moves the gates by hand, following the advice: that is no interruption.
    if plan.mode == Mode::Auto && operator_changed_gates(&mut tx, &plan).await? {
        let evidence = serde_json::json!({"after_audit_id": plan.last_audit_id, "stage": plan.current_stage});
        let step =
            Step { decision: Decision::Interrupted, reason: "operator_changed_gates", state: State::Interrupted };
        return finish(tx, &plan, step, None, None, &evidence, None, &ctx, now).await.map(Some);
    }

    let Some(stage) = plan.stage().cloned() else {
        return Err(RolloutError::Invalid { field: "current_stage", detail: "the plan has no such stage" });
    };
    let started = match (plan.state, plan.stage_started_at) {
        (State::Pending, _) | (_, None) => None,
        (_, Some(at)) => Some(at),
    };
    let Some(started) = started else {
        // Start: apply the first stage.
        let evidence = serde_json::json!({"stage": plan.current_stage, "percentage": stage.percentage});
        let step = Step { decision: Decision::Start, reason: "plan_started", state: State::Running };
        let change = Change::SetPercentageOfActors(stage.percentage);
        return finish(tx, &plan, step, Some(&change), Some(plan.current_stage), &evidence, None, &ctx, now)
            .await
            .map(Some);
    };

    let channel = report::channel_for(&plan.feature)
        .ok_or(RolloutError::Invalid { field: "feature", detail: "the feature gates no send route" })?;
    let counts = report::stage_counts(&mut *tx, channel, started, now).await?;
    let evidence = Evidence::new(&plan, started, now, counts)
        .ok_or(RolloutError::Invalid { field: "current_stage", detail: "the plan has no such stage" })?;
    let (decision, reason) = decide(&evidence);
    let evidence_json = serde_json::to_value(&evidence).unwrap_or(Value::Null);
    let (state, change, next) = match decision {
        Decision::Advance => {
            let next = plan.current_stage + 1;
            let pct = plan.next_stage().map(|s| s.percentage).unwrap_or(stage.percentage);
            (State::Running, Some(Change::SetPercentageOfActors(pct)), Some(next))
        }
        Decision::Pause => (State::Paused, Some(Change::Pause), None),
        Decision::Complete => (State::Completed, None, None),
        Decision::Halt => (State::Halted, None, None),
        _ => (State::Running, None, None),
    };
    let step = Step { decision, reason, state };
    finish(tx, &plan, step, change.as_ref(), next, &evidence_json, Some(evidence), &ctx, now).await.map(Some)
}

/// A decision and where it leaves the plan.
struct Step {
    decision: Decision,
    reason: &'static str,
    state: State,
}

/// Records a decision (gate change, audit row, decision log, plan row) and commits.
///
/// A hold or halt that repeats the plan's previous decision and reason is counted and its numbers kept
/// on the plan (`last_evaluation`), but not logged again: a stage waiting a day would otherwise write a
/// row every minute.
#[allow(clippy::too_many_arguments)] // One decision's parts; grouping them would only move the list.
async fn finish(
    mut tx: sqlx::Transaction<'_, Postgres>,
    plan: &Plan,
    step: Step,
    change: Option<&Change>,
    next_stage: Option<i32>,
    evidence_json: &Value,
    evidence: Option<Evidence>,
    ctx: &AuditContext,
    now: DateTime<Utc>,
) -> Result<Outcome, RolloutError> {
    let Step { decision, reason, state } = step;
    let repeat = matches!(decision, Decision::Hold | Decision::Halt)
        && plan.last_decision.as_deref() == Some(decision.as_str())
        && plan.last_reason.as_deref() == Some(reason);
    let mut applied = false;
    let mut audit_id = plan.last_audit_id;
    if !repeat {
        let value = match change {
            Some(Change::SetPercentageOfActors(p)) => Some(format_percentage(*p)),
            _ => None,
        };
        // The evidence goes in the audit row's reason, so `GET .../audit` shows why without a join.
        let ctx = AuditContext { reason: Some(evidence_json.to_string()), ..ctx.clone() };
        let (id, changed) = audit_decision(&mut tx, plan, decision, change, value.as_deref(), &ctx, now).await?;
        audit_id = id;
        applied = changed;
        let record = Record { decision, reason, applied, ctx: &ctx, evidence: evidence_json, at: now };
        log_decision(&mut tx, plan, &record).await?;
    }
    let (stage, restart) = match (decision, next_stage) {
        (Decision::Start, Some(stage)) | (Decision::Advance, Some(stage)) => (stage, true),
        _ => (plan.current_stage, false),
    };
    // Leaving a stage: its click-through rate is the next stage's yardstick.
    let previous_ctr = if decision == Decision::Advance {
        evidence.as_ref().and_then(|e| e.click_through_rate)
    } else {
        plan.previous_ctr
    };
    sqlx::query(
        "update rollout_plans set state = $2, current_stage = $3,
             stage_started_at = case when $4 then $5 else stage_started_at end,
             previous_ctr = $6, last_audit_id = greatest(last_audit_id, $7),
             last_decision = $8, last_reason = $9, last_evaluation = $10, last_evaluated_at = $5, updated_at = $5
         where id = $1",
    )
    .bind(plan.id)
    .bind(state.as_str())
    .bind(stage)
    .bind(restart)
    .bind(now)
    .bind(previous_ctr)
    .bind(audit_id)
    .bind(decision.as_str())
    .bind(reason)
    .bind(evidence_json)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    count(decision, plan.mode);
    if !repeat {
        tracing::info!(
            plan = %plan.id,
            decision = decision.as_str(),
            reason,
            mode = plan.mode.as_str(),
            applied,
            stage,
            "rollout decision"
        );
    }
    Ok(Outcome { plan_id: plan.id, decision, reason, applied, state, evidence })
}

/// Whether a gate change was audited after the plan's last own row: someone else moved the gates.
async fn operator_changed_gates(conn: &mut PgConnection, plan: &Plan) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from feature_audit
                        where feature_key = $1 and id > $2 and before is distinct from after)",
    )
    .bind(&plan.feature)
    .bind(plan.last_audit_id)
    .fetch_one(conn)
    .await
}

/// The evaluator's election: a session-level advisory lock held on one pooled connection for one pass.
struct EvaluatorLock {
    conn: Option<PoolConnection<Postgres>>,
}

impl EvaluatorLock {
    async fn try_acquire(pool: &PgPool) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(EVALUATOR_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        Ok(locked.then_some(Self { conn: Some(conn) }))
    }

    async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked: Result<bool, _> = sqlx::query_scalar("select pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(EVALUATOR_LOCK)
                .fetch_one(&mut *conn)
                .await;
            if !matches!(unlocked, Ok(true)) {
                // Never hand a connection that may still hold the lock back to the pool: closing it is
                // what releases a session lock for certain.
                drop(conn.detach());
            }
        }
    }
}

impl Drop for EvaluatorLock {
    fn drop(&mut self) {
        // Dropped without `release` (a cancelled pass): close the session rather than pool it locked.
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// Runs [`evaluate_once`] every `interval` until `cancel` fires.
pub async fn run(pool: PgPool, interval: Duration, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Cancelling mid-pass is safe: each plan's decision is one transaction, rolled back if dropped.
        let pass = tokio::select! {
            _ = cancel.cancelled() => return,
            pass = evaluate_once(&pool, Utc::now()) => pass,
        };
        if let Err(e) = pass {
            tracing::warn!(error = %e, "rollout evaluation pass failed; retrying on the next tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(attempted: i64, failed: i64, dwell_seconds: i64) -> Evidence {
        let counts = Counts { attempted, failed, delivered: attempted - failed, ..Counts::default() };
        let now = Utc::now();
        Evidence {
            stage: 0,
            stages: 5,
            percentage: 2.0,
            from: now - chrono::Duration::seconds(dwell_seconds),
            to: now,
            dwell_seconds,
            min_dwell_seconds: 3600,
            min_sends: 100,
            max_error_rate: 0.05,
            error_rate: counts.error_rate(),
            click_through_rate: counts.click_through_rate(),
            previous_click_through_rate: None,
            min_ctr_ratio: None,
            counts,
        }
    }

    #[test]
    fn a_stage_that_meets_dwell_sample_and_criteria_advances() {
        assert_eq!(decide(&evidence(100, 4, 3600)), (Decision::Advance, "criteria_met"));
        let last = Evidence { stage: 4, ..evidence(100, 0, 3600) };
        assert_eq!(decide(&last), (Decision::Complete, "criteria_met"));
    }

    #[test]
    fn a_failing_stage_with_enough_sample_pauses_even_before_its_dwell() {
        assert_eq!(decide(&evidence(100, 6, 10)), (Decision::Pause, "error_rate_exceeded"));
        // At the threshold the report says FAIL ("below 5%" is the criterion), so it pauses too.
        assert_eq!(decide(&evidence(100, 5, 3600)), (Decision::Pause, "error_rate_exceeded"));
    }

    #[test]
    fn too_little_data_never_passes() {
        assert_eq!(decide(&evidence(0, 0, 3600)), (Decision::Halt, "insufficient_sample"));
        assert_eq!(decide(&evidence(99, 0, 86_400)), (Decision::Halt, "insufficient_sample"));
        // Even a terrible small sample only halts: it is not enough evidence to pause either.
        assert_eq!(decide(&evidence(10, 10, 3600)), (Decision::Halt, "insufficient_sample"));
        assert_eq!(decide(&evidence(10, 0, 60)), (Decision::Hold, "dwell_not_met"));
        // 100 sent, but only 99 know their outcome: the last one may still fail.
        let mut waiting = evidence(100, 0, 3600);
        waiting.counts.delivered = 99;
        assert_eq!(decide(&waiting), (Decision::Halt, "awaiting_delivery_status"));
    }

    #[test]
    fn the_click_through_criterion_compares_with_the_previous_stage() {
        let mut e = evidence(100, 0, 3600);
        e.counts.unique_clicks = 30;
        e.click_through_rate = e.counts.click_through_rate();
        e.previous_click_through_rate = Some(0.4);
        e.min_ctr_ratio = Some(0.8);
        assert_eq!(decide(&e), (Decision::Halt, "ctr_below_ratio"));
        e.counts.unique_clicks = 33;
        e.click_through_rate = e.counts.click_through_rate();
        assert_eq!(decide(&e), (Decision::Advance, "criteria_met"));
        e.previous_click_through_rate = Some(0.0);
        e.counts.unique_clicks = 0;
        e.click_through_rate = Some(0.0);
        assert_eq!(decide(&e), (Decision::Advance, "criteria_met"), "no yardstick without previous clicks");
    }

    #[test]
    fn audit_operations_are_prefixed() {
        for d in [Decision::Advance, Decision::Pause, Decision::Hold] {
            assert_eq!(d.audit_operation(), format!("rollout_{}", d.as_str()));
        }
    }
}
