//! A rollout plan and its transitions, without a database: the states, the stages, what the evaluator
//! decides from a stage's numbers ([`decide`]), where each decision leaves the plan ([`after_decision`])
//! and what an operator's override does ([`override_step`]). [`super::storage`] holds every statement.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{DEFAULT_MAX_ERROR_RATE, DEFAULT_MIN_SENDS, RolloutError};
use crate::report::{self, Counts, Verdict, channel_for};
use crate::toggles::store::Change;

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
    pub(crate) const ALL: [State; 7] =
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
    /// Feature key: a channel's gate (`event_bus_gateway_emails_enabled`,
    /// `event_bus_gateway_letter_ready_sms_notifications` or `event_bus_gateway_letter_ready_push_notifications`).
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
        let Some(channel) = channel_for(&self.feature) else {
            return invalid("feature", report::UNKNOWN_FEATURE);
        };
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
        if self.min_ctr_ratio.is_some() && !report::measures(channel).tracked_link {
            return invalid("min_ctr_ratio", "the feature's channel has no click-through rate (push: no tracked link)");
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
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub id: Uuid,
    pub feature: String,
    pub stages: Vec<StagePlan>,
    pub max_error_rate: f64,
    pub min_ctr_ratio: Option<f64>,
    pub mode: Mode,
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
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
    pub(crate) fn decision(self) -> Decision {
        match self {
            Self::Pause => Decision::Pause,
            Self::Resume => Decision::Resume,
            Self::Advance => Decision::Advance,
            Self::Abort => Decision::Abort,
        }
    }
}

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
    pub(crate) fn new(plan: &Plan, started: DateTime<Utc>, now: DateTime<Utc>, counts: Counts) -> Option<Self> {
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
///    sends with a final outcome (`settled`: delivered or failed; for push, which has no delivery
///    receipts, an accepted send is final): a send still awaiting its delivery status is no evidence of
///    success yet, and may yet turn out a failure.
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
    if u64::try_from(e.counts.settled).map_or(true, |s| s < e.min_sends) {
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

/// Where an evaluator decision leaves the plan: its state, the gate change (for an `auto` plan) and the
/// stage it moves to.
pub fn after_decision(plan: &Plan, decision: Decision) -> (State, Option<Change>, Option<i32>) {
    match decision {
        Decision::Advance => {
            let pct = plan.next_stage().or(plan.stage()).map_or(0.0, |s| s.percentage);
            (State::Running, Some(Change::SetPercentageOfActors(pct)), Some(plan.current_stage + 1))
        }
        Decision::Pause => (State::Paused, Some(Change::Pause), None),
        Decision::Complete => (State::Completed, None, None),
        Decision::Halt => (State::Halted, None, None),
        _ => (State::Running, None, None),
    }
}

/// What an operator's override does to a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct OverrideStep {
    pub state: State,
    pub stage: i32,
    /// The stage starts over (its dwell and numbers count from now).
    pub restart: bool,
    /// The gate change to make (none when the gates already say so).
    pub change: Option<Change>,
    /// The audit row's value (the new percentage).
    pub value: Option<String>,
    pub decision: Decision,
}

/// The effect of `action` on `plan` whose feature is `feature_paused`, or why it does not apply.
pub fn override_step(plan: &Plan, action: Action, feature_paused: bool) -> Result<OverrideStep, RolloutError> {
    let refuse = |action: &'static str| Err(RolloutError::InvalidTransition { action, state: plan.state.as_str() });
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
    Ok(OverrideStep { state, stage, restart, change, value, decision })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
        let link = crate::notify::templates::UNIVERSAL_LINK_FEATURE;
        assert_eq!(field(NewPlan { feature: link.into(), ..plan(default_stages()) }), "feature", "not a gate");
        let push = crate::toggles::PUSH_ENABLED.to_owned();
        assert!(NewPlan { feature: push.clone(), ..plan(default_stages()) }.validate().is_ok());
        assert!(NewPlan { feature: crate::toggles::SMS_ENABLED.into(), ..plan(default_stages()) }.validate().is_ok());
        assert_eq!(
            field(NewPlan { feature: push, min_ctr_ratio: Some(0.8), ..plan(default_stages()) }),
            "min_ctr_ratio"
        );
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

    fn stored(state: State, current_stage: i32) -> Plan {
        let now = Utc::now();
        Plan {
            id: uuid::Uuid::nil(),
            feature: crate::toggles::EMAILS_ENABLED.to_owned(),
            stages: vec![stage(2.0), stage(50.0)],
            max_error_rate: 0.05,
            min_ctr_ratio: None,
            mode: Mode::Auto,
            state,
            current_stage,
            stage_started_at: Some(now),
            previous_ctr: None,
            last_audit_id: 0,
            last_decision: None,
            last_reason: None,
            last_evaluation: None,
            last_evaluated_at: None,
            created_by: "test".into(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn overrides_move_plans_only_where_they_apply() {
        let step = override_step(&stored(State::Pending, 0), Action::Advance, false).unwrap();
        assert_eq!((step.state, step.stage, step.decision), (State::Running, 0, Decision::Start));
        assert_eq!(step.change, Some(Change::SetPercentageOfActors(2.0)));
        let step = override_step(&stored(State::Running, 0), Action::Advance, false).unwrap();
        assert_eq!(
            (step.state, step.stage, step.restart, step.value.as_deref()),
            (State::Running, 1, true, Some("50"))
        );
        let step = override_step(&stored(State::Running, 1), Action::Advance, false).unwrap();
        assert_eq!((step.state, step.decision, step.change), (State::Completed, Decision::Complete, None));
        let step = override_step(&stored(State::Running, 0), Action::Pause, false).unwrap();
        assert_eq!((step.state, step.change), (State::Paused, Some(Change::Pause)));
        let step = override_step(&stored(State::Halted, 0), Action::Pause, true).unwrap();
        assert_eq!((step.state, step.change), (State::Paused, None), "already paused: no gate change");
        let step = override_step(&stored(State::Paused, 0), Action::Resume, true).unwrap();
        assert_eq!((step.state, step.restart, step.change), (State::Running, true, Some(Change::Resume)));
        for (state, action) in [
            (State::Running, Action::Resume),
            (State::Paused, Action::Pause),
            (State::Paused, Action::Advance),
            (State::Completed, Action::Abort),
            (State::Aborted, Action::Pause),
        ] {
            assert!(
                matches!(override_step(&stored(state, 0), action, false), Err(RolloutError::InvalidTransition { .. })),
                "{action:?} on {state:?}"
            );
        }
        assert_eq!(override_step(&stored(State::Paused, 0), Action::Abort, true).unwrap().state, State::Aborted);
    }

    #[test]
    fn decisions_leave_the_plan_where_the_rules_say() {
        let plan = stored(State::Running, 0);
        assert_eq!(
            after_decision(&plan, Decision::Advance),
            (State::Running, Some(Change::SetPercentageOfActors(50.0)), Some(1))
        );
        assert_eq!(after_decision(&plan, Decision::Pause), (State::Paused, Some(Change::Pause), None));
        assert_eq!(after_decision(&plan, Decision::Complete), (State::Completed, None, None));
        assert_eq!(after_decision(&plan, Decision::Halt), (State::Halted, None, None));
        assert_eq!(after_decision(&plan, Decision::Hold), (State::Running, None, None));
    }
}

#[cfg(test)]
mod decide_tests {
    use super::*;

    fn evidence(attempted: i64, failed: i64, dwell_seconds: i64) -> Evidence {
        let counts = Counts {
            attempted,
            failed,
            delivered: Some(attempted - failed),
            settled: attempted,
            unique_clicks: Some(0),
            ..Counts::default()
        };
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
        waiting.counts.delivered = Some(99);
        waiting.counts.settled = 99;
        assert_eq!(decide(&waiting), (Decision::Halt, "awaiting_delivery_status"));
        // A push stage: no delivered count, every accepted push is final.
        let mut push = evidence(100, 2, 3600);
        push.counts.delivered = None;
        push.counts.unique_clicks = None;
        assert_eq!(decide(&push), (Decision::Advance, "criteria_met"));
    }

    #[test]
    fn the_click_through_criterion_compares_with_the_previous_stage() {
        let mut e = evidence(100, 0, 3600);
        e.counts.unique_clicks = Some(30);
        e.click_through_rate = e.counts.click_through_rate();
        e.previous_click_through_rate = Some(0.4);
        e.min_ctr_ratio = Some(0.8);
        assert_eq!(decide(&e), (Decision::Halt, "ctr_below_ratio"));
        e.counts.unique_clicks = Some(33);
        e.click_through_rate = e.counts.click_through_rate();
        assert_eq!(decide(&e), (Decision::Advance, "criteria_met"));
        e.previous_click_through_rate = Some(0.0);
        e.counts.unique_clicks = Some(0);
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
