//! Guarded rollout (SPEC §9): the release plan as data, executed by the service.
//!
//! A [`Plan`] names a feature, its ordered stages (percentage of actors, minimum dwell time, minimum
//! sample of attempted sends) and its criteria (maximum error rate; optionally a minimum click-through
//! rate relative to the previous stage). The [`evaluate`] module judges the current stage with the
//! rollout report's own queries and advances, pauses the feature (kill switch, gates preserved), or
//! waits; too little data never passes. In `advise` mode it only records what it would do.
//!
//! Every decision is written three times, in one transaction with the gate change it makes: to the plan's
//! decision log (`rollout_decisions`), to `feature_audit` (operation `rollout_<decision>`, the evidence
//! as JSON in `reason`), and counted in `/metrics` (`ebg_rollout_decisions_total{decision,mode}`).
//! Operators override through [`override_plan`] (pause, resume, advance, abort); a gate change made
//! outside the plan marks an `auto` plan `interrupted`, after which the evaluator leaves it alone.

pub mod evaluate;
pub mod plan;
mod storage;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use evaluate::{EvaluationRun, Outcome, evaluate_once, run};
pub use plan::{
    Action, Decision, DecisionEntry, Evidence, Mode, NewPlan, OverrideStep, Plan, PlanDetail, StagePlan, State,
    UnknownValue, decide, default_stages,
};
pub use storage::{get, list};

use crate::metrics as m;
use crate::toggles::store::{self, AuditContext, AuditOptions, Change, StoreError};

/// The actor the evaluator's audit rows carry.
pub const ACTOR: &str = "rollout";

/// Default error-rate threshold of a plan (the seed's "error rate stays below 5%").
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.05;

/// Minimum sample of the default plan's stages: attempted sends before a stage can be judged.
pub const DEFAULT_MIN_SENDS: u64 = 100;

/// Why a rollout operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The plan is malformed.
    #[error("invalid {field}: {detail}")]
    Invalid { field: &'static str, detail: &'static str },
    /// No plan with that id.
    #[error("rollout plan not found")]
    NotFound,
    /// The feature already has a live plan.
    #[error("the feature already has a live rollout plan; abort it first")]
    AlreadyLive,
    /// The override does not apply in the plan's state.
    #[error("cannot {action} a plan that is {state}")]
    InvalidTransition { action: &'static str, state: &'static str },
    /// The feature's gates do not allow the plan (e.g. its boolean gate is on).
    #[error("{0}")]
    Feature(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Stores a new plan (state `pending`: the evaluator starts it on its next pass).
#[tracing::instrument(skip_all, fields(feature = %new.feature, mode = new.mode.as_str()))]
pub async fn create(pool: &PgPool, new: &NewPlan, created_by: &str) -> Result<Plan, RolloutError> {
    new.validate()?;
    let mut tx = pool.begin().await?;
    store::lock_feature(&mut tx, &new.feature).await?;
    if new.mode == Mode::Auto {
        let (exists, feature) = store::fetch(&mut tx, &new.feature).await?;
        let gates = exists.then(|| (feature.gates(), feature.paused));
        if gates.as_ref().is_some_and(|(g, _)| g.boolean) {
            return Err(RolloutError::Feature(
                "the feature is on for everyone (boolean gate); a percentage rollout would change nothing",
            ));
        }
        if gates.as_ref().is_some_and(|(_, paused)| *paused) {
            return Err(RolloutError::Feature("the feature is paused; resume it first, or create an advise plan"));
        }
    }
    // Gate changes after this row are someone else's (see `last_audit_id`).
    let last_audit_id = storage::last_audit_id(&mut tx, &new.feature).await?;
    let plan = match storage::insert(&mut tx, new, last_audit_id, created_by).await {
        Ok(plan) => plan,
        Err(e) if is_unique_violation(&e, "rollout_plans_one_live") => return Err(RolloutError::AlreadyLive),
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    tracing::info!(plan = %plan.id, "rollout plan created");
    Ok(plan)
}

fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    e.as_database_error().is_some_and(|d| d.code().as_deref() == Some("23505") && d.constraint() == Some(constraint))
}

/// One plan with its decision log.
pub async fn detail(pool: &PgPool, id: Uuid) -> Result<Option<PlanDetail>, sqlx::Error> {
    let Some(plan) = get(pool, id).await? else { return Ok(None) };
    let decisions = storage::decisions(pool, id).await?;
    Ok(Some(PlanDetail { plan, decisions }))
}

/// A decision to record, with what it changed.
pub(crate) struct Record<'a> {
    pub decision: Decision,
    pub reason: &'static str,
    pub applied: bool,
    pub ctx: &'a AuditContext,
    pub evidence: &'a Value,
    pub at: DateTime<Utc>,
}

/// Writes a decision to the plan's log. The `feature_audit` row is written by the caller (with the
/// gate change, when there is one).
pub(crate) async fn log_decision(conn: &mut PgConnection, plan: &Plan, record: &Record<'_>) -> Result<(), sqlx::Error> {
    let row = storage::DecisionRow {
        plan,
        at: record.at,
        decision: record.decision.as_str(),
        reason: record.reason,
        applied: record.applied,
        actor: &record.ctx.actor,
        evidence: record.evidence,
    };
    storage::insert_decision(conn, &row).await
}

/// Counts a decision in `/metrics`.
pub(crate) fn count(decision: Decision, mode: Mode) {
    metrics::counter!(m::ROLLOUT_DECISIONS, "decision" => decision.as_str(), "mode" => mode.as_str()).increment(1);
}

/// Writes the decision's `feature_audit` row: the gate change when `change` is given and the plan is
/// `auto`, else a row that changes nothing. Returns the row id and whether a gate was changed.
pub(crate) async fn audit_decision(
    conn: &mut PgConnection,
    plan: &Plan,
    decision: Decision,
    change: Option<&Change>,
    value: Option<&str>,
    ctx: &AuditContext,
    at: DateTime<Utc>,
) -> Result<(i64, bool), StoreError> {
    let options = AuditOptions { operation: Some(decision.audit_operation()), at: Some(at) };
    match change {
        Some(change) if plan.mode == Mode::Auto => {
            let applied = store::apply_in(conn, &plan.feature, change, ctx, &options).await?;
            Ok((applied.audit_id, applied.before != applied.after))
        }
        _ => {
            let (_, id) = store::record_in(conn, &plan.feature, value, ctx, &options).await?;
            Ok((id, false))
        }
    }
}

/// Applies an operator's override, audited under the operator's name, and returns the plan afterwards.
#[tracing::instrument(skip_all, fields(plan = %id, action = ?action))]
pub async fn override_plan(
    pool: &PgPool,
    id: Uuid,
    action: Action,
    ctx: &AuditContext,
    now: DateTime<Utc>,
) -> Result<Plan, RolloutError> {
    let mut tx = pool.begin().await?;
    let plan = storage::lock_plan(&mut tx, id).await?.ok_or(RolloutError::NotFound)?;
    store::lock_feature(&mut tx, &plan.feature).await?;
    let (_, feature) = store::fetch(&mut tx, &plan.feature).await?;
    let OverrideStep { state, stage, restart, change, value, decision } =
        plan::override_step(&plan, action, feature.paused)?;
    let evidence = json!({
        "manual": true,
        "operator_reason": ctx.reason,
        "from_state": plan.state.as_str(),
        "to_state": state.as_str(),
        "from_stage": plan.current_stage,
        "to_stage": stage,
        "percentage": usize::try_from(stage).ok().and_then(|i| plan.stages.get(i)).map(|s| s.percentage),
    });
    let (audit_id, applied) =
        audit_decision(&mut tx, &plan, decision, change.as_ref(), value.as_deref(), ctx, now).await?;
    let record = Record { decision, reason: "manual", applied, ctx, evidence: &evidence, at: now };
    log_decision(&mut tx, &plan, &record).await?;
    let overridden = storage::Overridden { state, stage, restart, at: now, audit_id, decision: decision.as_str() };
    let updated = storage::save_override(&mut tx, plan.id, &overridden).await?;
    tx.commit().await?;
    count(decision, plan.mode);
    tracing::info!(decision = decision.as_str(), state = state.as_str(), "rollout plan overridden");
    Ok(updated)
}

/// The evidence's key numbers on one line.
pub fn evidence_line(evidence: &serde_json::Value) -> String {
    let num = |k: &str| evidence.get(k).and_then(serde_json::Value::as_f64);
    match (num("attempted"), num("failed")) {
        (Some(attempted), Some(failed)) => format!(
            "attempted={attempted} failed={failed} error_rate={} (max {}) dwell={}s",
            num("error_rate").map_or_else(|| "n/a".to_owned(), percent),
            num("max_error_rate").map_or_else(|| "n/a".to_owned(), percent),
            num("dwell_seconds").unwrap_or(0.0),
        ),
        _ => String::new(),
    }
}

fn percent(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}
