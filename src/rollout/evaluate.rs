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
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use super::plan::{Decision, Evidence, decide};
use super::storage::{self, lock_plan, operator_changed_gates};
use super::{ACTOR, Mode, Plan, Record, RolloutError, State, audit_decision, count, log_decision};
use crate::report;
use crate::toggles::format_percentage;
use crate::toggles::store::{self, AuditContext, Change};

/// Key of the advisory lock that elects the one evaluating replica.
const EVALUATOR_LOCK: &str = "ebg_rollout/evaluator";

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
    let ids = storage::evaluated_ids(pool).await?;
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
        .ok_or(RolloutError::Invalid { field: "feature", detail: report::UNKNOWN_FEATURE })?;
    let counts = report::stage_counts(&mut *tx, channel, started, now).await?;
    let evidence = Evidence::new(&plan, started, now, counts)
        .ok_or(RolloutError::Invalid { field: "current_stage", detail: "the plan has no such stage" })?;
    let (decision, reason) = decide(&evidence);
    let evidence_json = serde_json::to_value(&evidence).unwrap_or(Value::Null);
    let (state, change, next) = super::plan::after_decision(&plan, decision);
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
    let evaluated = storage::Evaluated {
        state,
        stage,
        restart,
        at: now,
        previous_ctr,
        audit_id,
        decision: decision.as_str(),
        reason,
        evidence: evidence_json,
    };
    storage::save_evaluation(&mut tx, plan.id, &evaluated).await?;
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

/// The evaluator's election: a session-level advisory lock held on one pooled connection for one pass.
struct EvaluatorLock {
    conn: Option<PoolConnection<Postgres>>,
}

impl EvaluatorLock {
    async fn try_acquire(pool: &PgPool) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let locked = storage::try_session_lock(&mut conn, EVALUATOR_LOCK).await?;
        Ok(locked.then_some(Self { conn: Some(conn) }))
    }

    async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = storage::session_unlock(&mut conn, EVALUATOR_LOCK).await;
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
