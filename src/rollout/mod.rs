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

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use evaluate::{Decision, EvaluationRun, Evidence, Outcome, decide, evaluate_once, run};

use crate::metrics as m;
use crate::report::channel_for;
use crate::toggles::store::{self, AuditContext, AuditOptions, Change, StoreError};

/// The actor the evaluator's audit rows carry.
pub const ACTOR: &str = "rollout";

/// Default error-rate threshold of a plan (the seed's "error rate stays below 5%").
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.05;

/// Minimum sample of the default plan's stages: attempted sends before a stage can be judged.
pub const DEFAULT_MIN_SENDS: u64 = 100;

/// How a plan acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Records what it would do; never changes a gate (the operator acts on the advice).
    Advise,
    /// Changes the gates itself: advances stages and pauses the feature.
    Auto,
}

impl Mode {
    /// The stored and labelled name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Advise => "advise",
            Self::Auto => "auto",
        }
    }
}

/// Where a plan is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created; the evaluator starts it (applies the first stage) on its next pass.
    Pending,
    /// The current stage is being watched.
    Running,
    /// The feature was paused (kill switch) by the plan or an operator; `resume` continues.
    Paused,
    /// The stage's dwell is over but its sample is too small to judge: waiting for traffic, never passing.
    Halted,
    /// The last stage passed.
    Completed,
    /// An operator changed the gates outside the plan; the evaluator stopped acting on it.
    Interrupted,
    /// Stopped by an operator; the gates were left as they were.
    Aborted,
}

impl State {
    /// Every state, for parsing.
    const ALL: [State; 7] =
        [Self::Pending, Self::Running, Self::Paused, Self::Halted, Self::Completed, Self::Interrupted, Self::Aborted];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::Completed => "completed",
            Self::Interrupted => "interrupted",
            Self::Aborted => "aborted",
        }
    }

    /// Whether the plan still owns its feature's rollout (at most one such plan per feature).
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Running | Self::Paused | Self::Halted)
    }

    /// Whether the evaluator looks at the plan.
    pub fn is_evaluated(self) -> bool {
        matches!(self, Self::Pending | Self::Running | Self::Halted)
    }
}

/// A stored value that is not one of the enum's names (the table's check constraints prevent it).
#[derive(Debug, thiserror::Error)]
#[error("unknown rollout {0} value")]
pub struct UnknownValue(&'static str);

impl TryFrom<String> for State {
    type Error = UnknownValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::ALL.into_iter().find(|s| s.as_str() == value).ok_or(UnknownValue("state"))
    }
}

impl TryFrom<String> for Mode {
    type Error = UnknownValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "advise" => Ok(Self::Advise),
            "auto" => Ok(Self::Auto),
            _ => Err(UnknownValue("mode")),
        }
    }
}

/// One stage of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StagePlan {
    /// Percentage of actors, above 0 and at most 100; strictly increasing along the plan.
    pub percentage: f64,
    /// The stage lasts at least this long before it can pass.
    pub min_dwell_seconds: u64,
    /// Attempted sends (the error rate's denominator) needed before the stage is judged; at least 1.
    pub min_sends: u64,
}

/// The seed's release plan: a 2% canary for 4 hours, then 25, 50, 75 and 100%, a day each.
pub fn default_stages() -> Vec<StagePlan> {
    const HOUR: u64 = 3600;
    [(2.0, 4 * HOUR), (25.0, 24 * HOUR), (50.0, 24 * HOUR), (75.0, 24 * HOUR), (100.0, 24 * HOUR)]
        .into_iter()
        .map(|(percentage, min_dwell_seconds)| StagePlan {
            percentage,
            min_dwell_seconds,
            min_sends: DEFAULT_MIN_SENDS,
        })
        .collect()
}

/// A plan to create (`POST /admin/rollouts`, `ebg-notify rollout create`).
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct NewPlan {
    /// Feature key; it must gate a send route (today `event_bus_gateway_emails_enabled`).
    pub feature: String,
    /// Ordered stages; default: [`default_stages`].
    #[serde(default = "default_stages")]
    pub stages: Vec<StagePlan>,
    /// A stage fails when its error rate reaches this fraction; default 0.05.
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// Optional: a stage's click-through rate must be at least this fraction of the previous stage's.
    #[serde(default)]
    pub min_ctr_ratio: Option<f64>,
    /// `advise` or `auto`.
    pub mode: Mode,
}

fn default_max_error_rate() -> f64 {
    DEFAULT_MAX_ERROR_RATE
}

impl NewPlan {
    /// Checks the plan; the message names the first problem.
    pub fn validate(&self) -> Result<(), RolloutError> {
        let invalid = |field: &'static str, detail: &'static str| Err(RolloutError::Invalid { field, detail });
        if channel_for(&self.feature).is_none() {
            return invalid("feature", "the feature must gate a send route (event_bus_gateway_emails_enabled)");
        }
        if self.stages.is_empty() || self.stages.len() > 20 {
            return invalid("stages", "a plan has 1 to 20 stages");
        }
        let mut previous = 0.0;
        for stage in &self.stages {
            if !(stage.percentage.is_finite() && stage.percentage > previous && stage.percentage <= 100.0) {
                return invalid("stages", "percentages must increase strictly, each above 0 and at most 100");
            }
            if stage.min_sends == 0 {
                return invalid("stages", "min_sends must be at least 1: a stage without evidence never passes");
            }
            if stage.min_dwell_seconds > 90 * 86_400 {
                return invalid("stages", "min_dwell_seconds must be at most 90 days");
            }
            previous = stage.percentage;
        }
        if !(self.max_error_rate > 0.0 && self.max_error_rate <= 1.0) {
            return invalid("max_error_rate", "max_error_rate must be a fraction above 0 and at most 1 (0.05 = 5%)");
        }
        if self.min_ctr_ratio.is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 10.0)) {
            return invalid(
                "min_ctr_ratio",
                "min_ctr_ratio must be above 0 and at most 10 (0.8 = 80% of the previous stage)",
            );
        }
        Ok(())
    }
}

/// A stored plan.
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Plan {
    pub id: Uuid,
    #[sqlx(rename = "feature_key")]
    pub feature: String,
    #[sqlx(json)]
    pub stages: Vec<StagePlan>,
    pub max_error_rate: f64,
    pub min_ctr_ratio: Option<f64>,
    #[sqlx(try_from = "String")]
    pub mode: Mode,
    #[sqlx(try_from = "String")]
    pub state: State,
    /// 0-based index into `stages`.
    pub current_stage: i32,
    pub stage_started_at: Option<DateTime<Utc>>,
    /// Click-through rate of the previous stage when it was left.
    pub previous_ctr: Option<f64>,
    /// Newest `feature_audit` row written by this plan (gate changes after it interrupt an `auto` plan).
    pub last_audit_id: i64,
    pub last_decision: Option<String>,
    pub last_reason: Option<String>,
    /// The numbers of the latest evaluation.
    #[schema(value_type = Option<Object>)]
    pub last_evaluation: Option<Value>,
    pub last_evaluated_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Plan {
    /// The stage being watched.
    pub fn stage(&self) -> Option<&StagePlan> {
        usize::try_from(self.current_stage).ok().and_then(|i| self.stages.get(i))
    }

    /// The stage after the current one.
    pub fn next_stage(&self) -> Option<&StagePlan> {
        usize::try_from(self.current_stage).ok().and_then(|i| self.stages.get(i + 1))
    }
}

/// One entry of a plan's decision log.
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DecisionEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// 0-based stage the decision was taken in.
    pub stage: i32,
    /// start, advance, complete, pause, hold, halt, interrupted, resume, abort.
    pub decision: String,
    /// A fixed code, e.g. `criteria_met`, `error_rate_exceeded`, `insufficient_sample`, `manual`.
    pub reason: String,
    pub mode: String,
    /// Whether a gate was changed (false for advice and for holds).
    pub applied: bool,
    /// `rollout`, or the operator.
    pub actor: String,
    /// The stage's numbers and the thresholds they were judged against.
    #[schema(value_type = Object)]
    pub evidence: Value,
}

/// A plan with its decision log.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanDetail {
    #[serde(flatten)]
    pub plan: Plan,
    /// Oldest first.
    pub decisions: Vec<DecisionEntry>,
}

/// An operator's override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pause the feature (kill switch) and the plan.
    Pause,
    /// Resume the feature and the plan; the current stage starts over.
    Resume,
    /// Move to the next stage now, whatever the numbers (completes the plan after the last stage).
    Advance,
    /// Stop the plan; the gates stay as they are.
    Abort,
}

impl Action {
    fn decision(self) -> Decision {
        match self {
            Self::Pause => Decision::Pause,
            Self::Resume => Decision::Resume,
            Self::Advance => Decision::Advance,
            Self::Abort => Decision::Abort,
        }
    }
}

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

const PLAN_COLUMNS: &str = "id, feature_key, stages, max_error_rate, min_ctr_ratio, mode, state, current_stage,
    stage_started_at, previous_ctr, last_audit_id, last_decision, last_reason, last_evaluation, last_evaluated_at,
    created_by, created_at, updated_at";

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
    let last_audit_id: i64 =
        sqlx::query_scalar("select coalesce(max(id), 0) from feature_audit where feature_key = $1")
            .bind(&new.feature)
            .fetch_one(&mut *tx)
            .await?;
    let inserted = sqlx::query_as::<_, Plan>(&format!(
        "insert into rollout_plans (id, feature_key, stages, max_error_rate, min_ctr_ratio, mode, state, last_audit_id,
             created_by)
         values ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)
         returning {PLAN_COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(&new.feature)
    .bind(sqlx::types::Json(&new.stages))
    .bind(new.max_error_rate)
    .bind(new.min_ctr_ratio)
    .bind(new.mode.as_str())
    .bind(last_audit_id)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await;
    let plan = match inserted {
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

/// One plan.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Plan>, sqlx::Error> {
    sqlx::query_as(&format!("select {PLAN_COLUMNS} from rollout_plans where id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// One plan with its decision log.
pub async fn detail(pool: &PgPool, id: Uuid) -> Result<Option<PlanDetail>, sqlx::Error> {
    let Some(plan) = get(pool, id).await? else { return Ok(None) };
    let decisions = sqlx::query_as(
        "select id, at, stage, decision, reason, mode, applied, actor, evidence
         from rollout_decisions where plan_id = $1 order by id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(PlanDetail { plan, decisions }))
}

/// Plans, newest first.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<Plan>, sqlx::Error> {
    sqlx::query_as(&format!("select {PLAN_COLUMNS} from rollout_plans order by created_at desc, id limit $1"))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Reads a plan and locks its row until the transaction ends, so an override and the evaluator (or two
/// evaluators) never act on the same plan at once.
pub(crate) async fn lock_plan(conn: &mut PgConnection, id: Uuid) -> Result<Option<Plan>, sqlx::Error> {
    sqlx::query_as(&format!("select {PLAN_COLUMNS} from rollout_plans where id = $1 for update"))
        .bind(id)
        .fetch_optional(conn)
        .await
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

/// Writes a decision to the plan's log and counts it. The `feature_audit` row is written by the caller
/// (with the gate change, when there is one).
pub(crate) async fn log_decision(conn: &mut PgConnection, plan: &Plan, record: &Record<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into rollout_decisions (plan_id, at, stage, decision, reason, mode, applied, actor, evidence)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(plan.id)
    .bind(record.at)
    .bind(plan.current_stage)
    .bind(record.decision.as_str())
    .bind(record.reason)
    .bind(plan.mode.as_str())
    .bind(record.applied)
    .bind(&record.ctx.actor)
    .bind(record.evidence)
    .execute(conn)
    .await?;
    Ok(())
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
    let plan = lock_plan(&mut tx, id).await?.ok_or(RolloutError::NotFound)?;
    let refuse = |action: &'static str| Err(RolloutError::InvalidTransition { action, state: plan.state.as_str() });
    store::lock_feature(&mut tx, &plan.feature).await?;
    let (_, feature) = store::fetch(&mut tx, &plan.feature).await?;
    let feature_paused = feature.paused;
    // (new state, new stage, stage restarts, the gate change, the audit value)
    let (state, stage, restart, change, value) = match action {
        Action::Pause if matches!(plan.state, State::Pending | State::Running | State::Halted) => {
            (State::Paused, plan.current_stage, false, (!feature_paused).then_some(Change::Pause), None)
        }
        Action::Pause => return refuse("pause"),
        // The stage starts over: the numbers that led to the pause must not pause it again at once.
        Action::Resume if plan.state == State::Paused => {
            (State::Running, plan.current_stage, true, feature_paused.then_some(Change::Resume), None)
        }
        Action::Resume => return refuse("resume"),
        Action::Advance if matches!(plan.state, State::Pending | State::Running | State::Halted) => {
            // A pending plan has not applied its first stage yet: advancing it starts it.
            let next = if plan.state == State::Pending { 0 } else { plan.current_stage + 1 };
            match usize::try_from(next).ok().and_then(|i| plan.stages.get(i)) {
                Some(stage) => (
                    State::Running,
                    next,
                    true,
                    Some(Change::SetPercentageOfActors(stage.percentage)),
                    Some(crate::toggles::format_percentage(stage.percentage)),
                ),
                None => (State::Completed, plan.current_stage, false, None, None),
            }
        }
        Action::Advance => return refuse("advance"),
        Action::Abort if plan.state.is_live() => (State::Aborted, plan.current_stage, false, None, None),
        Action::Abort => return refuse("abort"),
    };
    let decision = match (action, plan.state, state) {
        (_, _, State::Completed) => Decision::Complete,
        (Action::Advance, State::Pending, _) => Decision::Start,
        _ => action.decision(),
    };
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
    let updated = sqlx::query_as::<_, Plan>(&format!(
        "update rollout_plans set state = $2, current_stage = $3,
             stage_started_at = case when $4 then $5 else stage_started_at end,
             last_audit_id = greatest(last_audit_id, $6), last_decision = $7, last_reason = 'manual', updated_at = $5
         where id = $1
         returning {PLAN_COLUMNS}"
    ))
    .bind(plan.id)
    .bind(state.as_str())
    .bind(stage)
    .bind(restart)
    .bind(now)
    .bind(audit_id)
    .bind(decision.as_str())
    .fetch_one(&mut *tx)
    .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(stages: Vec<StagePlan>) -> NewPlan {
        NewPlan {
            feature: crate::toggles::EMAILS_ENABLED.to_owned(),
            stages,
            max_error_rate: 0.05,
            min_ctr_ratio: None,
            mode: Mode::Auto,
        }
    }

    fn stage(percentage: f64) -> StagePlan {
        StagePlan { percentage, min_dwell_seconds: 60, min_sends: 10 }
    }

    #[test]
    fn the_default_plan_is_the_seeds() {
        let stages = default_stages();
        let pct: Vec<f64> = stages.iter().map(|s| s.percentage).collect();
        assert_eq!(pct, [2.0, 25.0, 50.0, 75.0, 100.0]);
        assert_eq!(stages[0].min_dwell_seconds, 4 * 3600);
        assert!(stages[1..].iter().all(|s| s.min_dwell_seconds == 86_400));
        assert!(plan(stages).validate().is_ok());
    }

    #[test]
    fn plans_are_validated() {
        let field = |p: NewPlan| match p.validate() {
            Err(RolloutError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(field(plan(vec![])), "stages");
        assert_eq!(field(plan(vec![stage(25.0), stage(2.0)])), "stages");
        assert_eq!(field(plan(vec![stage(2.0), stage(2.0)])), "stages");
        assert_eq!(field(plan(vec![stage(0.0)])), "stages");
        assert_eq!(field(plan(vec![stage(101.0)])), "stages");
        assert_eq!(field(plan(vec![StagePlan { min_sends: 0, ..stage(2.0) }])), "stages");
        assert_eq!(field(NewPlan { max_error_rate: 0.0, ..plan(default_stages()) }), "max_error_rate");
        assert_eq!(field(NewPlan { min_ctr_ratio: Some(-1.0), ..plan(default_stages()) }), "min_ctr_ratio");
        assert_eq!(field(NewPlan { feature: "other".into(), ..plan(default_stages()) }), "feature");
        assert!(plan(vec![stage(2.5), stage(100.0)]).validate().is_ok());
    }

    #[test]
    fn json_plans_take_defaults() {
        let p: NewPlan =
            serde_json::from_value(json!({"feature": "event_bus_gateway_emails_enabled", "mode": "advise"})).unwrap();
        assert_eq!(p.stages, default_stages());
        assert_eq!(p.max_error_rate, 0.05);
        assert_eq!(p.mode, Mode::Advise);
    }

    #[test]
    fn states_round_trip() {
        for s in State::ALL {
            assert_eq!(State::try_from(s.as_str().to_owned()).unwrap(), s);
        }
        assert!(State::try_from("nope".to_owned()).is_err());
    }
}
