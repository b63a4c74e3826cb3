//! The features list and one feature's page: its gates, the changes Flipper UI offers, the kill switch,
//! and its history from the audit log with "restore this state".

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::ConsoleError;
use super::layout::{Notice, Section, csrf_field, dot, page, pct, query_value, segment, when};
use super::session::{AdminForm, Session};
use crate::rollout::{self, Plan};
use crate::state::AppState;
use crate::toggles::parse_percentage;
use crate::toggles::store::{self, AuditContext, AuditEntry, Change, FeatureRecord, GateSnapshot, StoreError};

/// One-click percentages of actors (Flipper UI's, plus the seed's 2%).
const QUICK_PERCENTAGES: [u32; 9] = [0, 1, 2, 5, 10, 25, 50, 75, 100];
/// Longest description accepted.
const MAX_DESCRIPTION: usize = 500;
/// History rows shown on a feature's page.
const HISTORY_ROWS: i64 = 200;

/// `?q=` (search) and `?msg=` (the outcome of the change that redirected here).
#[derive(Deserialize)]
pub struct PageQuery {
    q: Option<String>,
    msg: Option<String>,
}

/// on / conditional / off, or paused (the kill switch wins).
pub fn status(record: &FeatureRecord) -> &'static str {
    if record.paused { "paused" } else { record.gates().state() }
}

/// The gates in words: "2% of actors, 1 actor".
pub fn gates_in_words(record: &FeatureRecord) -> String {
    let gates = record.gates();
    if gates.boolean {
        return "everyone".to_owned();
    }
    let mut parts = Vec::new();
    if gates.percentage_of_actors > 0.0 {
        parts.push(format!("{} of actors", pct(gates.percentage_of_actors)));
    }
    match gates.actors.len() {
        0 => {}
        1 => parts.push("1 actor".to_owned()),
        n => parts.push(format!("{n} actors")),
    }
    if gates.percentage_of_time > 0.0 {
        parts.push(format!("{} of the time", pct(gates.percentage_of_time)));
    }
    match record.groups.len() {
        0 => {}
        1 => parts.push("1 group".to_owned()),
        n => parts.push(format!("{n} groups")),
    }
    if record.expression.is_some() {
        parts.push("an expression".to_owned());
    }
    if parts.is_empty() { "nobody".to_owned() } else { parts.join(", ") }
}

fn notice_for(code: Option<&str>) -> Option<Notice> {
    let text = match code? {
        "enabled" => "Enabled for everyone.",
        "disabled" => "Disabled for everyone.",
        "actor_added" => "Actor added.",
        "actor_removed" => "Actor removed.",
        "percentage_of_actors" => "Percentage of actors set.",
        "percentage_of_time" => "Percentage of time set.",
        "paused" => "Paused: off for everyone, gates kept.",
        "resumed" => "Resumed: the gates apply again.",
        "restored" => "Earlier state restored.",
        "described" => "Description saved.",
        _ => return None,
    };
    Some(Notice::ok(text))
}

async fn live_plans(state: &AppState) -> Result<HashMap<String, Plan>, ConsoleError> {
    let plans = rollout::list(&state.db, 500).await?;
    Ok(plans.into_iter().filter(|p| p.state.is_live()).map(|p| (p.feature.clone(), p)).collect())
}

fn plan_summary(plan: &Plan) -> Markup {
    let stage = plan.stage().map(|s| pct(s.percentage)).unwrap_or_default();
    html! {
        a href={ "/console/rollouts/" (plan.id) } {
            (plan.state.as_str()) ", stage " (plan.current_stage + 1) " of " (plan.stages.len()) " (" (stage) ", " (plan.mode.as_str()) ")"
        }
    }
}

/// `GET /console`: every feature.
pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<PageQuery>,
) -> Result<Response, ConsoleError> {
    let records = store::all_features(&state.db).await?;
    let descriptions = store::descriptions(&state.db).await?;
    let plans = live_plans(&state).await?;
    let needle = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty()).map(str::to_lowercase);
    let shown: Vec<&FeatureRecord> = records
        .iter()
        .filter(|r| {
            needle.as_ref().is_none_or(|n| {
                r.key.to_lowercase().contains(n)
                    || descriptions.get(&r.key).is_some_and(|d| d.to_lowercase().contains(n))
            })
        })
        .collect();
    let body = html! {
        h1 { "Features" }
        form method="get" action="/console" role="search" class="row" {
            div {
                label for="q" { "Search features" }
                input id="q" name="q" type="search" value=(query.q.clone().unwrap_or_default());
            }
            button type="submit" { "Search" }
        }
        table {
            caption { (shown.len()) " of " (records.len()) " features" }
            thead { tr { th scope="col" { "Status" } th scope="col" { "Feature" } th scope="col" { "Description" } th scope="col" { "Enabled for" } th scope="col" { "Rollout plan" } } }
            tbody {
                @for r in &shown {
                    tr {
                        td { (dot(status(r))) (status(r)) }
                        td { a href={ "/console/features/" (segment(&r.key)) } { (r.key) } }
                        td { (descriptions.get(&r.key).map(String::as_str).unwrap_or("")) }
                        td class="gates" { (gates_in_words(r)) }
                        td { @if let Some(plan) = plans.get(&r.key) { (plan_summary(plan)) } @else { span class="muted" { "none" } } }
                    }
                }
            }
        }
    };
    Ok(page(
        &state.console_key,
        &session,
        Section::Features,
        "Features",
        notice_for(query.msg.as_deref()).as_ref(),
        body,
    )
    .into_response())
}

/// `GET /console/features/{name}`.
pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ConsoleError> {
    feature_page(&state, &session, &name, notice_for(query.msg.as_deref()), StatusCode::OK).await
}

async fn feature_page(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<Notice>,
    status_code: StatusCode,
) -> Result<Response, ConsoleError> {
    let record = store::feature(&state.db, name).await?.ok_or(ConsoleError::NotFound("feature"))?;
    let description = store::descriptions(&state.db).await?.remove(name);
    let plan = live_plans(state).await?.remove(name);
    let history = store::audit_log(&state.db, name, HISTORY_ROWS, None).await?;
    let key = &state.console_key;
    let write = session.can_write();
    let action = |a: &str| format!("/console/features/{}/{a}", segment(name));
    let gates = record.gates();
    let body = html! {
        h1 { "Feature " code { (record.key) } }
        dl class="card" {
            dt { "Status" } dd id="status" { (dot(status(&record))) (status(&record)) }
            dt { "Enabled for" } dd id="gates" { (gates_in_words(&record)) @if record.paused { " (while paused: nobody)" } }
            dt { "Description" } dd id="description" { (description.clone().unwrap_or_else(|| "none".to_owned())) }
            dt { "Rollout plan" } dd { @if let Some(plan) = &plan { (plan_summary(plan)) } @else { "none" } }
        }
        @if !write {
            p class="notice ok" { "This session is read-only: the page shows no controls." }
        } @else {
            section aria-labelledby="everyone" {
                h2 id="everyone" { "Everyone" }
                div class="row" {
                    form method="post" action=(action("enable")) {
                        (csrf_field(key, session))
                        label for="reason-enable" { "Reason (optional)" }
                        input id="reason-enable" name="reason" type="text";
                        button type="submit" { "Enable for everyone" }
                    }
                    form method="post" action=(action("disable")) {
                        (csrf_field(key, session))
                        label for="confirm-disable" { "Type " code { (record.key) } " to disable for everyone (removes every gate)" }
                        input id="confirm-disable" name="confirm" type="text" autocomplete="off" required;
                        label for="reason-disable" { "Reason (optional)" }
                        input id="reason-disable" name="reason" type="text";
                        button type="submit" class="danger" { "Disable for everyone" }
                    }
                }
            }
            section aria-labelledby="actors" {
                h2 id="actors" { "Actors" }
                @if gates.actors.is_empty() { p class="muted" { "No actor is enabled one by one." } }
                ul {
                    @for actor in &gates.actors {
                        li {
                            code { (actor) } " "
                            form method="post" action=(action("remove-actor")) class="inline" {
                                (csrf_field(key, session))
                                input type="hidden" name="flipper_id" value=(actor);
                                button type="submit" class="secondary" aria-label={ "Remove actor " (actor) } { "Remove" }
                            }
                        }
                    }
                }
                form method="post" action=(action("add-actor")) class="row" {
                    (csrf_field(key, session))
                    div { label for="flipper_id" { "Actor (participant id)" } input id="flipper_id" name="flipper_id" type="text" inputmode="numeric" required; }
                    div { label for="reason-actor" { "Reason (optional)" } input id="reason-actor" name="reason" type="text"; }
                    button type="submit" { "Add actor" }
                }
            }
            section aria-labelledby="poa" {
                h2 id="poa" { "Percentage of actors" }
                p { "Now: " strong { (pct(gates.percentage_of_actors)) } }
                form method="post" action=(action("percentage-of-actors")) {
                    (csrf_field(key, session))
                    label for="reason-poa" { "Reason (optional)" }
                    input id="reason-poa" name="reason" type="text";
                    div role="group" aria-label="Set the percentage of actors" {
                        @for p in QUICK_PERCENTAGES {
                            @let current = (gates.percentage_of_actors - f64::from(p)).abs() < f64::EPSILON;
                            button type="submit" name="percentage" value=(p) aria-pressed=(current) { (p) "%" }
                        }
                    }
                }
                form method="post" action=(action("percentage-of-actors")) class="row" {
                    (csrf_field(key, session))
                    div { label for="poa-custom" { "Custom percentage of actors" } input id="poa-custom" name="percentage" type="number" min="0" max="100" step="any" required; }
                    div { label for="reason-poa-custom" { "Reason (optional)" } input id="reason-poa-custom" name="reason" type="text"; }
                    button type="submit" { "Set percentage of actors" }
                }
            }
            section aria-labelledby="pot" {
                h2 id="pot" { "Percentage of time" }
                p { "Now: " strong { (pct(gates.percentage_of_time)) } }
                form method="post" action=(action("percentage-of-time")) class="row" {
                    (csrf_field(key, session))
                    div { label for="pot-custom" { "Percentage of time" } input id="pot-custom" name="percentage" type="number" min="0" max="100" step="any" required; }
                    div { label for="reason-pot" { "Reason (optional)" } input id="reason-pot" name="reason" type="text"; }
                    button type="submit" { "Set percentage of time" }
                }
            }
            section aria-labelledby="kill" {
                h2 id="kill" { "Pause (kill switch)" }
                @if record.paused {
                    p { "Paused: off for everyone. Resuming restores the gates above exactly." }
                    form method="post" action=(action("resume")) class="row" {
                        (csrf_field(key, session))
                        div { label for="reason-resume" { "Reason (optional)" } input id="reason-resume" name="reason" type="text"; }
                        button type="submit" { "Resume" }
                    }
                } @else {
                    p { "Pausing turns the feature off for everyone and keeps its gates, so resuming restores this stage." }
                    form method="post" action=(action("pause")) class="row" {
                        (csrf_field(key, session))
                        div { label for="reason-pause" { "Reason (required)" } input id="reason-pause" name="reason" type="text" required; }
                        button type="submit" class="danger" { "Pause" }
                    }
                }
            }
            section aria-labelledby="describe" {
                h2 id="describe" { "Description" }
                form method="post" action=(action("describe")) class="stack" {
                    (csrf_field(key, session))
                    label for="description-text" { "Description (shown in the list; blank removes it)" }
                    textarea id="description-text" name="description" rows="2" cols="60" maxlength=(MAX_DESCRIPTION) { (description.unwrap_or_default()) }
                    button type="submit" { "Save description" }
                }
            }
        }
        section aria-labelledby="history" {
            h2 id="history" { "History" }
            (history_table(key, session, &action("restore"), &history))
        }
    };
    let title = format!("Feature {name}");
    Ok((status_code, page(key, session, Section::Features, &title, notice.as_ref(), body)).into_response())
}

fn history_table(key: &super::SessionKey, session: &Session, restore: &str, history: &[AuditEntry]) -> Markup {
    html! {
        @if history.is_empty() { p class="muted" { "No change recorded yet." } } @else {
            table id="history-table" {
                caption { "Changes, newest first" }
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Operation" }
                    th scope="col" { "Reason" } th scope="col" { "Before → after" }
                    @if session.can_write() { th scope="col" { "Restore" } }
                } }
                tbody {
                    @for e in history {
                        tr {
                            td { (when(e.at)) }
                            td { (e.actor) }
                            td { (operation_words(e)) }
                            td class="reason" { (e.reason.clone().unwrap_or_default()) }
                            td { (diff(&e.before, &e.after)) }
                            @if session.can_write() {
                                td {
                                    @if GateSnapshot::from_audit(&e.after).is_some() {
                                        form method="post" action=(restore) class="inline" {
                                            (csrf_field(key, session))
                                            input type="hidden" name="audit_id" value=(e.id);
                                            button type="submit" class="secondary" aria-label={ "Restore this state, after change " (e.id) } { "Restore this state" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn operation_words(e: &AuditEntry) -> String {
    let gate = e.gate.as_deref().map(|g| g.replace('_', " "));
    match (e.operation.as_str(), gate, e.value.as_deref()) {
        ("restore", _, Some(id)) => format!("restore the state after change {id}"),
        ("describe", _, _) => "describe".to_owned(),
        (op, Some(gate), Some(value)) => format!("{op} {gate} {value}"),
        (op, Some(gate), None) => format!("{op} {gate}"),
        (op, None, _) => op.replace('_', " "),
    }
}

/// `before → after` in words, one line per gate that changed.
fn diff(before: &Value, after: &Value) -> Markup {
    let (Some(b), Some(a)) = (GateSnapshot::from_audit(before), GateSnapshot::from_audit(after)) else {
        return html! { span class="muted" { "—" } };
    };
    let yes_no = |v: bool| if v { "yes" } else { "no" };
    let mut lines: Vec<(String, String, String)> = Vec::new();
    if b.boolean != a.boolean {
        lines.push(("everyone".into(), yes_no(b.boolean).into(), yes_no(a.boolean).into()));
    }
    if b.percentage_of_actors != a.percentage_of_actors {
        lines.push(("percentage of actors".into(), pct(b.percentage_of_actors), pct(a.percentage_of_actors)));
    }
    if b.percentage_of_time != a.percentage_of_time {
        lines.push(("percentage of time".into(), pct(b.percentage_of_time), pct(a.percentage_of_time)));
    }
    if b.paused != a.paused {
        lines.push(("paused".into(), yes_no(b.paused).into(), yes_no(a.paused).into()));
    }
    let added: BTreeSet<&String> = a.actors.difference(&b.actors).collect();
    let removed: BTreeSet<&String> = b.actors.difference(&a.actors).collect();
    html! {
        @if lines.is_empty() && added.is_empty() && removed.is_empty() { span class="muted" { "no gate change" } }
        ul class="diff" {
            @for (what, from, to) in &lines { li { (what) ": " del { (from) } " → " ins { (to) } } }
            @for actor in &added { li { "actor " ins { "+ " (actor) } } }
            @for actor in &removed { li { "actor " del { "− " (actor) } } }
        }
    }
}

/// `POST /console/features/{name}/{action}`: one change, through the same write path as the Flipper API.
pub async fn change(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    AdminForm(form): AdminForm,
) -> Result<Response, ConsoleError> {
    if store::feature(&state.db, &name).await?.is_none() {
        return Err(ConsoleError::NotFound("feature"));
    }
    let ctx = form.audit();
    let planned = plan_change(&state, &name, &action, &form, &ctx).await?;
    let outcome = match planned {
        Err(message) => Err(message),
        Ok(Planned::Describe(text)) => match store::describe(&state.db, &name, &text, &ctx).await {
            Ok(()) => Ok("described"),
            Err(e) => Err(store_message(e)?),
        },
        Ok(Planned::Change(change, done)) => match state.toggles.apply(&name, &change, &ctx).await {
            Ok(_) => Ok(done),
            Err(e) => Err(store_message(e)?),
        },
    };
    match outcome {
        Ok(code) => {
            tracing::info!(actor = %ctx.actor, action = %action, "console change");
            Ok(Redirect::to(&format!("/console/features/{}?msg={}", segment(&name), query_value(code))).into_response())
        }
        Err(message) => {
            feature_page(&state, &form.session, &name, Some(Notice::error(message)), StatusCode::UNPROCESSABLE_ENTITY)
                .await
        }
    }
}

enum Planned {
    Change(Change, &'static str),
    Describe(String),
}

/// Reads the form of one action into the change it asks for, or the message explaining why it cannot.
async fn plan_change(
    state: &AppState,
    name: &str,
    action: &str,
    form: &super::session::SessionForm,
    ctx: &AuditContext,
) -> Result<Result<Planned, String>, ConsoleError> {
    let percentage = || {
        form.field("percentage")
            .and_then(parse_percentage)
            .ok_or_else(|| "The percentage must be a number from 0 to 100.".to_owned())
    };
    let actor =
        || form.field("flipper_id").map(str::to_owned).ok_or_else(|| "Enter an actor (participant id).".to_owned());
    Ok(match action {
        "enable" => Ok(Planned::Change(Change::EnableBoolean, "enabled")),
        "disable" if form.field("confirm") == Some(name) => Ok(Planned::Change(Change::DisableBoolean, "disabled")),
        "disable" => Err(format!("To disable for everyone, type the feature's name ({name}) exactly.")),
        "add-actor" => actor().map(|a| Planned::Change(Change::AddActor(a), "actor_added")),
        "remove-actor" => actor().map(|a| Planned::Change(Change::RemoveActor(a), "actor_removed")),
        "percentage-of-actors" => {
            percentage().map(|p| Planned::Change(Change::SetPercentageOfActors(p), "percentage_of_actors"))
        }
        "percentage-of-time" => {
            percentage().map(|p| Planned::Change(Change::SetPercentageOfTime(p), "percentage_of_time"))
        }
        "pause" if ctx.reason.is_some() => Ok(Planned::Change(Change::Pause, "paused")),
        "pause" => Err("A reason is required to pause.".to_owned()),
        "resume" => Ok(Planned::Change(Change::Resume, "resumed")),
        "restore" => {
            let id =
                form.field("audit_id").and_then(|v| v.parse::<i64>().ok()).ok_or(ConsoleError::NotFound("change"))?;
            let entry = store::audit_entry(&state.db, name, id).await?.ok_or(ConsoleError::NotFound("change"))?;
            match GateSnapshot::from_audit(&entry.after) {
                Some(snapshot) => Ok(Planned::Change(Change::Restore { snapshot, audit_id: id }, "restored")),
                None => Err("That change recorded no state to restore.".to_owned()),
            }
        }
        "describe" => {
            let text = form.fields.get("description").map(|d| d.trim().to_owned()).unwrap_or_default();
            if text.chars().count() > MAX_DESCRIPTION {
                Err(format!("A description has at most {MAX_DESCRIPTION} characters."))
            } else {
                Ok(Planned::Describe(text))
            }
        }
        _ => return Err(ConsoleError::NotFound("action")),
    })
}

fn store_message(e: StoreError) -> Result<String, ConsoleError> {
    match e {
        StoreError::NotFound => Err(ConsoleError::NotFound("feature")),
        StoreError::Database(e) => Err(e.into()),
        other => Ok(format!("Refused: {other}.")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_read_as_words() {
        let mut r = FeatureRecord { key: "f".into(), ..FeatureRecord::default() };
        assert_eq!(gates_in_words(&r), "nobody");
        r.percentage_of_actors = Some("2".into());
        r.actors.insert("600061742".into());
        assert_eq!(gates_in_words(&r), "2% of actors, 1 actor");
        r.percentage_of_time = Some("2.5".into());
        r.actors.insert("1".into());
        assert_eq!(gates_in_words(&r), "2% of actors, 2 actors, 2.5% of the time");
        r.boolean = Some("true".into());
        assert_eq!(gates_in_words(&r), "everyone");
    }

    #[test]
    fn status_prefers_the_kill_switch() {
        let mut r = FeatureRecord { key: "f".into(), boolean: Some("true".into()), ..FeatureRecord::default() };
        assert_eq!(status(&r), "on");
        r.paused = true;
        assert_eq!(status(&r), "paused");
    }
}
