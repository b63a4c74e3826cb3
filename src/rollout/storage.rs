//! Every statement on `rollout_plans` and `rollout_decisions`, and the evaluator's election lock. The
//! rules live in [`super::plan`]; this module only reads and writes what they decided.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::plan::{DecisionEntry, Mode, NewPlan, Plan, StagePlan, State, UnknownValue};

/// A `rollout_plans` row as stored; [`Plan`] is its checked form.
struct PlanRow {
    id: Uuid,
    feature_key: String,
    stages: Json<Vec<StagePlan>>,
    max_error_rate: f64,
    min_ctr_ratio: Option<f64>,
    mode: String,
    state: String,
    current_stage: i32,
    stage_started_at: Option<DateTime<Utc>>,
    previous_ctr: Option<f64>,
    last_audit_id: i64,
    last_decision: Option<String>,
    last_reason: Option<String>,
    last_evaluation: Option<Value>,
    last_evaluated_at: Option<DateTime<Utc>>,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<PlanRow> for Plan {
    type Error = sqlx::Error;
    fn try_from(row: PlanRow) -> Result<Self, Self::Error> {
        let decode = |e: UnknownValue| sqlx::Error::Decode(Box::new(e));
        Ok(Plan {
            id: row.id,
            feature: row.feature_key,
            stages: row.stages.0,
            max_error_rate: row.max_error_rate,
            min_ctr_ratio: row.min_ctr_ratio,
            mode: Mode::try_from(row.mode).map_err(decode)?,
            state: State::try_from(row.state).map_err(decode)?,
            current_stage: row.current_stage,
            stage_started_at: row.stage_started_at,
            previous_ctr: row.previous_ctr,
            last_audit_id: row.last_audit_id,
            last_decision: row.last_decision,
            last_reason: row.last_reason,
            last_evaluation: row.last_evaluation,
            last_evaluated_at: row.last_evaluated_at,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

fn checked(row: Option<PlanRow>) -> Result<Option<Plan>, sqlx::Error> {
    row.map(Plan::try_from).transpose()
}

/// The newest `feature_audit` row of `feature` (0 when none): gate changes after it are someone else's.
pub(crate) async fn last_audit_id(conn: &mut PgConnection, feature: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"select coalesce(max(id), 0) as "id!" from feature_audit where feature_key = $1"#, feature)
        .fetch_one(conn)
        .await
}

/// Stores a new plan as `pending`. A second live plan for the feature violates `rollout_plans_one_live`.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    new: &NewPlan,
    last_audit_id: i64,
    created_by: &str,
) -> Result<Plan, sqlx::Error> {
    let row = sqlx::query_as!(
        PlanRow,
        r#"insert into rollout_plans (id, feature_key, stages, max_error_rate, min_ctr_ratio, mode, state, last_audit_id,
             created_by)
         values ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)
         returning id, feature_key, stages as "stages: Json<Vec<StagePlan>>", max_error_rate, min_ctr_ratio, mode,
             state, current_stage, stage_started_at, previous_ctr, last_audit_id, last_decision, last_reason,
             last_evaluation, last_evaluated_at, created_by, created_at, updated_at"#,
        Uuid::new_v4(),
        new.feature,
        Json(&new.stages) as _,
        new.max_error_rate,
        new.min_ctr_ratio,
        new.mode.as_str(),
        last_audit_id,
        created_by,
    )
    .fetch_one(conn)
    .await?;
    Plan::try_from(row)
}

/// One plan.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Plan>, sqlx::Error> {
    let row = sqlx::query_as!(
        PlanRow,
        r#"select id, feature_key, stages as "stages: Json<Vec<StagePlan>>", max_error_rate, min_ctr_ratio, mode,
             state, current_stage, stage_started_at, previous_ctr, last_audit_id, last_decision, last_reason,
             last_evaluation, last_evaluated_at, created_by, created_at, updated_at
         from rollout_plans where id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    checked(row)
}

/// A plan's decision log, oldest first.
pub(crate) async fn decisions(pool: &PgPool, id: Uuid) -> Result<Vec<DecisionEntry>, sqlx::Error> {
    sqlx::query_as!(
        DecisionEntry,
        "select id, at, stage, decision, reason, mode, applied, actor, evidence
         from rollout_decisions where plan_id = $1 order by id",
        id
    )
    .fetch_all(pool)
    .await
}

/// Plans, newest first.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<Plan>, sqlx::Error> {
    let rows = sqlx::query_as!(
        PlanRow,
        r#"select id, feature_key, stages as "stages: Json<Vec<StagePlan>>", max_error_rate, min_ctr_ratio, mode,
             state, current_stage, stage_started_at, previous_ctr, last_audit_id, last_decision, last_reason,
             last_evaluation, last_evaluated_at, created_by, created_at, updated_at
         from rollout_plans order by created_at desc, id limit $1"#,
        limit
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Plan::try_from).collect()
}

/// Reads a plan and locks its row until the transaction ends, so an override and the evaluator (or two
/// evaluators) never act on the same plan at once.
pub(crate) async fn lock_plan(conn: &mut PgConnection, id: Uuid) -> Result<Option<Plan>, sqlx::Error> {
    let row = sqlx::query_as!(
        PlanRow,
        r#"select id, feature_key, stages as "stages: Json<Vec<StagePlan>>", max_error_rate, min_ctr_ratio, mode,
             state, current_stage, stage_started_at, previous_ctr, last_audit_id, last_decision, last_reason,
             last_evaluation, last_evaluated_at, created_by, created_at, updated_at
         from rollout_plans where id = $1 for update"#,
        id
    )
    .fetch_optional(conn)
    .await?;
    checked(row)
}

/// One row of a plan's decision log.
pub(crate) struct DecisionRow<'a> {
    pub plan: &'a Plan,
    pub at: DateTime<Utc>,
    pub decision: &'a str,
    pub reason: &'a str,
    pub applied: bool,
    pub actor: &'a str,
    pub evidence: &'a Value,
}

/// Appends to a plan's decision log (the stage and mode are the plan's).
pub(crate) async fn insert_decision(conn: &mut PgConnection, row: &DecisionRow<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into rollout_decisions (plan_id, at, stage, decision, reason, mode, applied, actor, evidence)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        row.plan.id,
        row.at,
        row.plan.current_stage,
        row.decision,
        row.reason,
        row.plan.mode.as_str(),
        row.applied,
        row.actor,
        row.evidence,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// How an override leaves the plan row.
pub(crate) struct Overridden<'a> {
    pub state: State,
    pub stage: i32,
    /// The stage starts over at `at`.
    pub restart: bool,
    pub at: DateTime<Utc>,
    pub audit_id: i64,
    pub decision: &'a str,
}

/// Writes an override's result (reason `manual`) and returns the plan afterwards.
pub(crate) async fn save_override(conn: &mut PgConnection, id: Uuid, o: &Overridden<'_>) -> Result<Plan, sqlx::Error> {
    let row = sqlx::query_as!(
        PlanRow,
        r#"update rollout_plans set state = $2, current_stage = $3,
             stage_started_at = case when $4 then $5 else stage_started_at end,
             last_audit_id = greatest(last_audit_id, $6), last_decision = $7, last_reason = 'manual', updated_at = $5
         where id = $1
         returning id, feature_key, stages as "stages: Json<Vec<StagePlan>>", max_error_rate, min_ctr_ratio, mode,
             state, current_stage, stage_started_at, previous_ctr, last_audit_id, last_decision, last_reason,
             last_evaluation, last_evaluated_at, created_by, created_at, updated_at"#,
        id,
        o.state.as_str(),
        o.stage,
        o.restart,
        o.at,
        o.audit_id,
        o.decision,
    )
    .fetch_one(conn)
    .await?;
    Plan::try_from(row)
}

/// The plans the evaluator looks at ([`State::is_evaluated`]), oldest first.
pub(crate) async fn evaluated_ids(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "select id from rollout_plans where state in ('pending', 'running', 'halted') order by created_at, id",
    )
    .fetch_all(pool)
    .await
}

/// How an evaluation leaves the plan row.
pub(crate) struct Evaluated<'a> {
    pub state: State,
    pub stage: i32,
    /// The stage starts over at `at`.
    pub restart: bool,
    pub at: DateTime<Utc>,
    pub previous_ctr: Option<f64>,
    pub audit_id: i64,
    pub decision: &'a str,
    pub reason: &'a str,
    pub evidence: &'a Value,
}

/// Writes an evaluation's result.
pub(crate) async fn save_evaluation(conn: &mut PgConnection, id: Uuid, e: &Evaluated<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update rollout_plans set state = $2, current_stage = $3,
             stage_started_at = case when $4 then $5 else stage_started_at end,
             previous_ctr = $6, last_audit_id = greatest(last_audit_id, $7),
             last_decision = $8, last_reason = $9, last_evaluation = $10, last_evaluated_at = $5, updated_at = $5
         where id = $1",
        id,
        e.state.as_str(),
        e.stage,
        e.restart,
        e.at,
        e.previous_ctr,
        e.audit_id,
        e.decision,
        e.reason,
        e.evidence,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether a gate change was audited after the plan's last own row: someone else moved the gates.
pub(crate) async fn operator_changed_gates(conn: &mut PgConnection, plan: &Plan) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from feature_audit
                          where feature_key = $1 and id > $2 and before is distinct from after) as "changed!""#,
        plan.feature,
        plan.last_audit_id,
    )
    .fetch_one(conn)
    .await
}

/// Takes the session-level advisory lock `key` on `conn` if it is free.
pub(crate) async fn try_session_lock(conn: &mut PgConnection, key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select pg_try_advisory_lock(hashtextextended($1, 0)) as "locked!""#, key)
        .fetch_one(conn)
        .await
}

/// Releases the session-level advisory lock `key` on `conn`; false if it was not held.
pub(crate) async fn session_unlock(conn: &mut PgConnection, key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select pg_advisory_unlock(hashtextextended($1, 0)) as "unlocked!""#, key)
        .fetch_one(conn)
        .await
}
