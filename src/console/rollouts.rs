//! Guarded-rollout plans: create one from the seed's defaults or edited stages, each plan's stage
//! timeline, its last evaluation against the thresholds, and the operator's overrides.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::ConsoleError;
use super::layout::{Notice, Section, csrf_field, duration, page, pct, rate, segment, when};
use super::session::{AdminForm, Session, SessionForm};
use crate::rollout::{self, Action, Mode, NewPlan, Plan, RolloutError, StagePlan, State as PlanState, default_stages};
use crate::state::AppState;
use crate::toggles::EMAILS_ENABLED;

/// Stage rows offered by the create form (the seed has five; two spare rows for edits).
const STAGE_ROWS: usize = 7;
const DEFAULT_MAX_ERROR_RATE_PERCENT: f64 = 5.0;

#[derive(Deserialize)]
pub struct MsgQuery {
    msg: Option<String>,
}

fn notice_for(code: Option<&str>) -> Option<Notice> {
    let text = match code? {
        "created" => "Plan created. The evaluator starts it on its next pass.",
        "pause" => "Plan paused.",
        "resume" => "Plan resumed; the current stage starts over.",
        "advance" => "Plan advanced.",
        "abort" => "Plan aborted; the gates stay as they are.",
        _ => return None,
    };
    Some(Notice::ok(text))
}

/// `GET /console/rollouts`: every plan and the create form.
pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<MsgQuery>,
) -> Result<Response, ConsoleError> {
    list_page(&state, &session, notice_for(query.msg.as_deref()), StatusCode::OK).await
}

async fn list_page(
    state: &AppState,
    session: &Session,
    notice: Option<Notice>,
    status: StatusCode,
) -> Result<Response, ConsoleError> {
    let plans = rollout::list(&state.db, 100).await?;
    let body = html! {
        h1 { "Rollouts" }
        @if plans.is_empty() { p class="muted" { "No rollout plan yet." } } @else {
            table {
                caption { "Plans, newest first" }
                thead { tr { th scope="col" { "Plan" } th scope="col" { "Feature" } th scope="col" { "State" } th scope="col" { "Stage" } th scope="col" { "Mode" } th scope="col" { "Last decision" } th scope="col" { "Created" } } }
                tbody {
                    @for p in &plans {
                        tr {
                            td { a href={ "/console/rollouts/" (p.id) } { (short(p.id)) } }
                            td { a href={ "/console/features/" (segment(&p.feature)) } { (p.feature) } }
                            td { (p.state.as_str()) }
                            td { (p.current_stage + 1) " of " (p.stages.len()) @if let Some(s) = p.stage() { " (" (pct(s.percentage)) ")" } }
                            td { (p.mode.as_str()) }
                            td { (p.last_decision.clone().unwrap_or_default()) @if let Some(r) = &p.last_reason { " (" (r) ")" } }
                            td { (when(p.created_at)) " by " (p.created_by) }
                        }
                    }
                }
            }
        }
        @if session.can_write() { (create_form(state, session)) }
    };
    Ok((status, page(&state.console_key, session, Section::Rollouts, "Rollouts", notice.as_ref(), body))
        .into_response())
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

fn create_form(state: &AppState, session: &Session) -> Markup {
    let seed = default_stages();
    html! {
        h2 id="create" { "Create a plan" }
        p { "The rows hold the seed's release plan (2% for 4 hours, then 25, 50, 75 and 100%, a day each). Edit them, or clear a row's percentage to drop it." }
        form method="post" action="/console/rollouts" aria-labelledby="create" {
            (csrf_field(&state.console_key, session))
            table {
                caption { "Stages" }
                thead { tr { th scope="col" { "Stage" } th scope="col" { "Percentage of actors" } th scope="col" { "Minimum dwell (hours)" } th scope="col" { "Minimum attempted sends" } } }
                tbody {
                    @for i in 0..STAGE_ROWS {
                        @let s = seed.get(i);
                        tr {
                            th scope="row" { (i + 1) }
                            td { input type="number" name={ "stage" (i) "_percentage" } min="0" max="100" step="any" aria-label={ "Stage " (i + 1) " percentage of actors" } value=[s.map(|s| s.percentage)]; }
                            td { input type="number" name={ "stage" (i) "_hours" } min="0" step="any" aria-label={ "Stage " (i + 1) " minimum dwell in hours" } value=[s.map(|s| s.min_dwell_seconds as f64 / 3600.0)]; }
                            td { input type="number" name={ "stage" (i) "_min_sends" } min="1" step="1" aria-label={ "Stage " (i + 1) " minimum attempted sends" } value=[s.map(|s| s.min_sends)]; }
                        }
                    }
                }
            }
            div class="row" {
                div { label for="max_error_rate" { "Pause at an error rate of (%)" } input id="max_error_rate" name="max_error_rate_percent" type="number" min="0" max="100" step="any" value=(DEFAULT_MAX_ERROR_RATE_PERCENT); }
                div { label for="min_ctr_ratio" { "Minimum click-through ratio to the previous stage (optional, e.g. 0.8)" } input id="min_ctr_ratio" name="min_ctr_ratio" type="number" min="0" max="10" step="any"; }
                div {
                    label for="mode" { "Mode" }
                    select id="mode" name="mode" {
                        option value="advise" selected { "advise (decide and record, change nothing)" }
                        option value="auto" { "auto (change the gates)" }
                    }
                }
            }
            div class="row" {
                div {
                    label for="feature" { "Feature (a channel's gate)" }
                    select id="feature" name="feature" {
                        @for gate in crate::report::GATES {
                            option value=(gate) selected[gate == EMAILS_ENABLED] {
                                (gate) " (" (crate::report::channel_for(gate).unwrap_or_default()) ")"
                            }
                        }
                    }
                }
            }
            button type="submit" { "Create plan" }
        }
    }
}

/// Reads the create form into a plan; `Err` names the problem.
fn new_plan(form: &SessionForm) -> Result<NewPlan, String> {
    let number = |name: &str| -> Result<Option<f64>, String> {
        match form.field(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map(Some)
                .ok_or_else(|| format!("{name} must be a number")),
        }
    };
    let mut stages = Vec::new();
    for i in 0..STAGE_ROWS {
        let Some(percentage) = number(&format!("stage{i}_percentage"))? else { continue };
        let hours = number(&format!("stage{i}_hours"))?.unwrap_or(0.0);
        let min_sends = number(&format!("stage{i}_min_sends"))?.unwrap_or(1.0);
        stages.push(StagePlan {
            percentage,
            min_dwell_seconds: (hours * 3600.0).round() as u64,
            min_sends: min_sends.round() as u64,
        });
    }
    let max_error_rate = number("max_error_rate_percent")?.unwrap_or(DEFAULT_MAX_ERROR_RATE_PERCENT) / 100.0;
    let mode = match form.field("mode") {
        Some("auto") => Mode::Auto,
        Some("advise") | None => Mode::Advise,
        Some(_) => return Err("mode must be advise or auto".into()),
    };
    Ok(NewPlan {
        feature: form.field("feature").unwrap_or(EMAILS_ENABLED).to_owned(),
        stages,
        max_error_rate,
        min_ctr_ratio: number("min_ctr_ratio")?,
        mode,
    })
}

fn rollout_message(e: RolloutError) -> Result<String, ConsoleError> {
    match e {
        RolloutError::NotFound => Err(ConsoleError::NotFound("rollout plan")),
        RolloutError::Database(e) => Err(e.into()),
        RolloutError::Store(e) => Err(ConsoleError::Internal(e.into())),
        other => Ok(format!("Refused: {other}.")),
    }
}

/// `POST /console/rollouts`: creates a plan (the same function `POST /admin/rollouts` calls).
pub async fn create(State(state): State<AppState>, AdminForm(form): AdminForm) -> Result<Response, ConsoleError> {
    let plan = match new_plan(&form) {
        Ok(plan) => plan,
        Err(message) => {
            return list_page(&state, &form.session, Some(Notice::error(message)), StatusCode::UNPROCESSABLE_ENTITY)
                .await;
        }
    };
    match rollout::create(&state.db, &plan, &form.session.name).await {
        Ok(created) => Ok(Redirect::to(&format!("/console/rollouts/{}?msg=created", created.id)).into_response()),
        Err(e) => {
            let message = rollout_message(e)?;
            list_page(&state, &form.session, Some(Notice::error(message)), StatusCode::UNPROCESSABLE_ENTITY).await
        }
    }
}

fn plan_id(raw: &str) -> Result<Uuid, ConsoleError> {
    raw.parse().map_err(|_| ConsoleError::NotFound("rollout plan"))
}

/// `GET /console/rollouts/{id}`.
pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(query): Query<MsgQuery>,
) -> Result<Response, ConsoleError> {
    plan_page(&state, &session, plan_id(&id)?, notice_for(query.msg.as_deref()), StatusCode::OK).await
}

async fn plan_page(
    state: &AppState,
    session: &Session,
    id: Uuid,
    notice: Option<Notice>,
    status: StatusCode,
) -> Result<Response, ConsoleError> {
    let detail = rollout::detail(&state.db, id).await?.ok_or(ConsoleError::NotFound("rollout plan"))?;
    let plan = &detail.plan;
    let key = &state.console_key;
    let body = html! {
        h1 { "Rollout plan " (short(plan.id)) }
        dl class="card" {
            dt { "Feature" } dd { a href={ "/console/features/" (segment(&plan.feature)) } { (plan.feature) } }
            dt { "State" } dd id="plan-state" { (plan.state.as_str()) }
            dt { "Mode" } dd { (plan.mode.as_str()) }
            dt { "Thresholds" } dd { "pause at an error rate of " (rate(Some(plan.max_error_rate))) @if let Some(r) = plan.min_ctr_ratio { "; click-through rate at least " (r) " × the previous stage's" } }
            dt { "Created" } dd { (when(plan.created_at)) " by " (plan.created_by) }
        }
        h2 { "Stages" }
        (timeline(plan))
        h2 { "Last evaluation" }
        @match (&plan.last_evaluation, plan.last_evaluated_at) {
            (Some(evidence), Some(at)) => {
                p { (when(at)) ": " strong { (plan.last_decision.clone().unwrap_or_default()) } @if let Some(r) = &plan.last_reason { " (" (r) ")" } }
                (evidence_table(evidence))
            }
            _ => p class="muted" { "Not evaluated yet." },
        }
        @if session.can_write() && !matches!(plan.state, PlanState::Completed | PlanState::Aborted) {
            h2 id="overrides" { "Overrides" }
            div class="row" {
                @for (action, label, required) in [("pause", "Pause", true), ("resume", "Resume", false), ("advance", "Advance to the next stage", false), ("abort", "Abort", true)] {
                    form method="post" action={ "/console/rollouts/" (plan.id) "/" (action) } class="card" {
                        (csrf_field(key, session))
                        label for={ "reason-" (action) } { "Reason" @if required { " (required)" } @else { " (optional)" } }
                        @if required {
                            input id={ "reason-" (action) } name="reason" type="text" required;
                        } @else {
                            input id={ "reason-" (action) } name="reason" type="text";
                        }
                        button type="submit" class=[(action == "abort").then_some("danger")] { (label) }
                    }
                }
            }
        }
        h2 { "Decisions" }
        table {
            caption { "Decision log, oldest first" }
            thead { tr { th scope="col" { "When" } th scope="col" { "Stage" } th scope="col" { "Decision" } th scope="col" { "Reason" } th scope="col" { "Applied" } th scope="col" { "By" } th scope="col" { "Evidence" } } }
            tbody {
                @for d in &detail.decisions {
                    tr {
                        td { (when(d.at)) }
                        td { (d.stage + 1) }
                        td { (d.decision) }
                        td { (d.reason) }
                        td { (if d.applied { "yes" } else { "no" }) }
                        td { (d.actor) }
                        td {
                            code { (rollout::evidence_line(&d.evidence)) }
                            @if let Some(reason) = d.evidence.get("operator_reason").and_then(Value::as_str) { "“" (reason) "”" }
                        }
                    }
                }
            }
        }
    };
    let title = format!("Rollout plan {}", short(plan.id));
    Ok((status, page(key, session, Section::Rollouts, &title, notice.as_ref(), body)).into_response())
}

fn timeline(plan: &Plan) -> Markup {
    let current = usize::try_from(plan.current_stage).unwrap_or(0);
    let finished = plan.state == PlanState::Completed;
    html! {
        ol class="timeline" aria-label="Stage timeline" {
            @for (i, s) in plan.stages.iter().enumerate() {
                @let class = if finished || i < current { "done" } else if i == current { "current" } else { "upcoming" };
                li class=(class) aria-current=[(class == "current").then_some("step")] {
                    "Stage " (i + 1) ": " (pct(s.percentage)) br;
                    span class="muted" { "at least " (duration(s.min_dwell_seconds)) ", " (s.min_sends) " sends" } br;
                    (match class { "done" => "passed", "current" => plan.state.as_str(), _ => "upcoming" })
                }
            }
        }
    }
}

/// The evidence against its thresholds: sample, error rate, click-through rate, dwell.
fn evidence_table(e: &Value) -> Markup {
    let num = |k: &str| e.get(k).and_then(Value::as_f64);
    let int = |k: &str| e.get(k).and_then(Value::as_i64).unwrap_or(0);
    let attempted = int("attempted");
    let min_sends = int("min_sends");
    let error_rate = num("error_rate");
    let max = num("max_error_rate").unwrap_or(0.0);
    let ctr = num("click_through_rate");
    let previous = num("previous_click_through_rate");
    let ratio = num("min_ctr_ratio");
    let dwell = int("dwell_seconds");
    let min_dwell = int("min_dwell_seconds");
    let verdict = |ok: bool| html! { @if ok { span class="pass" { "met" } } @else { span class="fail" { "not met" } } };
    html! {
        table id="evidence" {
            caption { "Evidence against the thresholds" }
            thead { tr { th scope="col" { "Measure" } th scope="col" class="num" { "Value" } th scope="col" class="num" { "Threshold" } th scope="col" { "Criterion" } } }
            tbody {
                tr { th scope="row" { "Sample (attempted sends)" } td class="num" { (attempted) } td class="num" { "≥ " (min_sends) } td { (verdict(attempted >= min_sends)) } }
                tr { th scope="row" { "Error rate (failed / attempted)" } td class="num" { (rate(error_rate)) " (" (int("failed")) " failed)" } td class="num" { "< " (rate(Some(max))) } td { (verdict(error_rate.is_some_and(|r| r < max))) } }
                tr {
                    th scope="row" { "Click-through rate" }
                    td class="num" { (rate(ctr)) }
                    td class="num" { @match (ratio, previous) { (Some(r), Some(p)) => { "≥ " (rate(Some(r * p))) }, _ => "none" } }
                    td { @match (ratio, previous) { (Some(r), Some(p)) if p > 0.0 => (verdict(ctr.is_some_and(|c| c >= r * p))), _ => span class="muted" { "not judged" } } }
                }
                tr { th scope="row" { "Dwell" } td class="num" { (duration(dwell.max(0) as u64)) } td class="num" { "≥ " (duration(min_dwell.max(0) as u64)) } td { (verdict(dwell >= min_dwell)) } }
                tr { th scope="row" { "Delivered / sent / unique users" } td class="num" { (int("delivered")) " / " (int("sent")) " / " (int("unique_participants")) } td {} td {} }
            }
        }
    }
}

/// `POST /console/rollouts/{id}/{action}`: pause, resume, advance or abort (as `/admin/rollouts/{id}/...`).
pub async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    AdminForm(form): AdminForm,
) -> Result<Response, ConsoleError> {
    let id = plan_id(&id)?;
    let (action, code) = match action.as_str() {
        "pause" => (Action::Pause, "pause"),
        "resume" => (Action::Resume, "resume"),
        "advance" => (Action::Advance, "advance"),
        "abort" => (Action::Abort, "abort"),
        _ => return Err(ConsoleError::NotFound("action")),
    };
    let ctx = form.audit();
    if ctx.reason.is_none() && matches!(action, Action::Pause | Action::Abort) {
        let notice = Notice::error("A reason is required to pause or abort a rollout.");
        return plan_page(&state, &form.session, id, Some(notice), StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    match rollout::override_plan(&state.db, id, action, &ctx, Utc::now()).await {
        Ok(_) => {
            state.toggles.refresh_after_write().await;
            Ok(Redirect::to(&format!("/console/rollouts/{id}?msg={code}")).into_response())
        }
        Err(e) => {
            let message = rollout_message(e)?;
            plan_page(&state, &form.session, id, Some(Notice::error(message)), StatusCode::UNPROCESSABLE_ENTITY).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_evidence_is_judged_against_each_threshold() {
        let evidence = json!({
            "attempted": 120, "failed": 9, "delivered": 100, "sent": 111, "unique_participants": 118,
            "min_sends": 100, "error_rate": 0.075, "max_error_rate": 0.05,
            "click_through_rate": 0.30, "previous_click_through_rate": 0.40, "min_ctr_ratio": 0.8,
            "dwell_seconds": 7200, "min_dwell_seconds": 14400,
        });
        let html = evidence_table(&evidence).into_string();
        let rows: Vec<&str> = html.split("<tr>").skip(2).collect();
        assert!(rows[0].contains("120") && rows[0].contains("met") && !rows[0].contains("not met"), "{}", rows[0]);
        assert!(rows[1].contains("7.5%") && rows[1].contains("not met"), "{}", rows[1]);
        assert!(rows[2].contains("30.0%") && rows[2].contains("≥ 32.0%") && rows[2].contains("not met"), "{}", rows[2]);
        assert!(rows[3].contains("2 h") && rows[3].contains("4 h") && rows[3].contains("not met"), "{}", rows[3]);
    }
}
