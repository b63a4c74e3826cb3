//! Notifications: the queue's depth and oldest due age, a look-up by id, the failures and dead
//! letters of the last days, and their replay (a dry run first, then the confirmed requeue).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::ConsoleError;
use super::layout::{Notice, Section, csrf_field, duration, page, query_value, when};
use super::session::{AdminForm, Session};
use crate::outbox;
use crate::outbox::history::{self, NotificationHistory};
use crate::outbox::replay::{REPLAYABLE, ReplayFilter, Summary, replay_candidates, requeue};
use crate::state::AppState;

const DEFAULT_DAYS: i64 = 7;
const MAX_DAYS: i64 = 400;
const LIST_LIMIT: i64 = 200;
/// Rows requeued per statement, as `ebg-notify replay` does.
const REPLAY_BATCH: usize = 500;

/// The page's query: look-up id, period, and the outcome of a replay preview or requeue.
#[derive(Deserialize, Default)]
pub struct PageQuery {
    id: Option<String>,
    days: Option<String>,
    preview_status: Option<String>,
    preview_since: Option<String>,
    preview_count: Option<i64>,
    requeued: Option<i64>,
}

fn days(raw: Option<&str>) -> Result<i64, String> {
    match raw.map(str::trim).filter(|d| !d.is_empty()) {
        None => Ok(DEFAULT_DAYS),
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=MAX_DAYS).contains(d))
            .ok_or_else(|| format!("Days must be a whole number from 1 to {MAX_DAYS}.")),
    }
}

/// `GET /console/notifications`.
pub async fn page_get(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<PageQuery>,
) -> Result<Response, ConsoleError> {
    let mut notice = query.requeued.map(|n| Notice::ok(format!("Requeued {n} notification(s).")));
    let days = match days(query.days.as_deref()) {
        Ok(d) => d,
        Err(message) => {
            notice = Some(Notice::error(message));
            DEFAULT_DAYS
        }
    };
    let since = Utc::now() - Duration::days(days);
    let (depth, oldest) = outbox::queue_depth(&state.db).await?;
    let ended = outbox::replay::ended_since(&state.db, since, LIST_LIMIT).await?;
    let mut lookup_error = None;
    if let Some(raw) = query.id.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
        match raw.parse::<Uuid>() {
            Ok(id) => return Ok(Redirect::to(&format!("/console/notifications/{id}")).into_response()),
            Err(_) => lookup_error = Some("A notification id is a UUID, e.g. 5a3b8e02-51b0-4d5a-8d0e-2c0e9f3c1a11."),
        }
    }
    let preview = preview(&query);
    let key = &state.console_key;
    let body = html! {
        h1 { "Notifications" }
        h2 { "Queue" }
        dl class="card" id="queue" {
            @for name in crate::outbox::lifecycle::names(&crate::outbox::lifecycle::PENDING) {
                dt { (name.replace('_', " ")) }
                dd { (depth.iter().find(|(s, _)| s == name).map_or(0, |(_, c)| *c)) }
            }
            dt { "Oldest due for" } dd { (duration(oldest.round() as u64)) }
        }
        h2 { "Look up a notification" }
        form method="get" action="/console/notifications" class="row" {
            div { label for="lookup-id" { "Notification id" } input id="lookup-id" name="id" type="text" size="40" value=(query.id.clone().unwrap_or_default()); }
            button type="submit" { "Look up" }
        }
        @if let Some(message) = lookup_error { p class="notice error" role="alert" { (message) } }
        h2 { "Failures and dead letters" }
        form method="get" action="/console/notifications" class="row" {
            div { label for="days" { "Created in the last (days)" } input id="days" name="days" type="number" min="1" max=(MAX_DAYS) value=(days); }
            button type="submit" { "Show" }
        }
        @if ended.is_empty() { p class="muted" { "No failed or dead notification since " (when(since)) "." } } @else {
            (summary_table("ended", &format!("Failed and dead since {}", since.format("%Y-%m-%d %H:%M UTC")), &ended))
        }
        @if session.can_write() {
            h2 id="replay" { "Replay" }
            @if let Some((status, since_preview, count)) = &preview {
                div class="card" id="replay-preview" {
                    p { strong { (count) } " notification(s) in state " code { (status) } " created since " (when(*since_preview)) " would be requeued with a full retry budget." }
                    @if *count > 0 {
                        form method="post" action="/console/notifications/replay" {
                            (csrf_field(key, &session))
                            input type="hidden" name="status" value=(status);
                            input type="hidden" name="since" value=(since_preview.to_rfc3339());
                            input type="hidden" name="dry_run" value="false";
                            button type="submit" class="danger" { "Requeue " (count) " notification(s)" }
                        }
                    }
                }
            }
            form method="post" action="/console/notifications/replay" class="row" {
                (csrf_field(key, &session))
                div {
                    label for="replay-status" { "State" }
                    select id="replay-status" name="status" { @for s in REPLAYABLE { option value=(s) { (s) } } }
                }
                div { label for="replay-days" { "Created in the last (days)" } input id="replay-days" name="days" type="number" min="1" max=(MAX_DAYS) value=(days); }
                input type="hidden" name="dry_run" value="true";
                button type="submit" { "Preview replay (dry run)" }
            }
        }
    };
    Ok(page(key, &session, Section::Notifications, "Notifications", notice.as_ref(), body).into_response())
}

fn preview(query: &PageQuery) -> Option<(String, DateTime<Utc>, i64)> {
    let status = query.preview_status.as_deref().filter(|s| REPLAYABLE.contains(s))?;
    let since = DateTime::parse_from_rfc3339(query.preview_since.as_deref()?).ok()?.with_timezone(&Utc);
    Some((status.to_owned(), since, query.preview_count?))
}

fn summary_table(id: &str, caption: &str, rows: &[Summary]) -> Markup {
    html! {
        table id=(id) {
            caption { (caption) }
            thead { tr {
                th scope="col" { "Id" } th scope="col" { "State" } th scope="col" { "Reason" } th scope="col" { "Channel" }
                th scope="col" { "Template" } th scope="col" class="num" { "Attempts" } th scope="col" { "Created" } th scope="col" { "Updated" }
            } }
            tbody {
                @for r in rows {
                    tr {
                        td { a href={ "/console/notifications/" (r.id) } { code { (r.id) } } }
                        td { (r.status) }
                        td { (r.status_reason.clone().unwrap_or_default()) }
                        td { (r.channel) }
                        td { code { (r.template_id) } }
                        td class="num" { (r.attempts) }
                        td { (when(r.created_at)) }
                        td { (when(r.updated_at)) }
                    }
                }
            }
        }
    }
}

/// `POST /console/notifications/replay`: `dry_run=true` counts and redirects to the preview; the
/// preview's confirm button posts `dry_run=false` with the same state and start time.
pub async fn replay(State(state): State<AppState>, AdminForm(form): AdminForm) -> Result<Response, ConsoleError> {
    let status = form
        .field("status")
        .filter(|s| REPLAYABLE.contains(s))
        .ok_or_else(|| ConsoleError::BadRequest("The state must be failed or dead.".into()))?
        .to_owned();
    let dry_run = form.field("dry_run") != Some("false");
    let since = match form.field("since") {
        Some(raw) => DateTime::parse_from_rfc3339(raw)
            .map_err(|_| ConsoleError::BadRequest("since must be an RFC 3339 time.".into()))?
            .with_timezone(&Utc),
        None => Utc::now() - Duration::days(days(form.field("days")).map_err(ConsoleError::BadRequest)?),
    };
    let filter = ReplayFilter { status: status.clone(), since: Some(since), ids: Vec::new() };
    let candidates = replay_candidates(&state.db, &filter).await?;
    let mut count = candidates.len() as u64;
    if dry_run {
        let location = format!(
            "/console/notifications?preview_status={}&preview_since={}&preview_count={count}#replay",
            query_value(&status),
            query_value(&since.to_rfc3339())
        );
        return Ok(Redirect::to(&location).into_response());
    }
    // Each row is requeued only if still in the state previewed, so a second confirm queues nothing twice.
    count = 0;
    for batch in candidates.chunks(REPLAY_BATCH) {
        count += requeue(&state.db, &status, batch).await?;
    }
    if count > 0 {
        state.wake_workers.wake();
    }
    tracing::info!(actor = %form.session.name, status = %status, requeued = count, "console replay");
    Ok(Redirect::to(&format!("/console/notifications?requeued={count}")).into_response())
}

/// `GET /console/notifications/{id}`: one notification's history (`outbox::history`, as
/// `GET /admin/notifications/{id}` serves it): the participant only as the keyed hash, never the id.
pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id: Uuid = id.parse().map_err(|_| ConsoleError::NotFound("notification"))?;
    let h = history::history(&state.db, id, &state.pii, false).await?.ok_or(ConsoleError::NotFound("notification"))?;
    let body = history_body(&h);
    let title = format!("Notification {id}");
    Ok(page(&state.console_key, &session, Section::Notifications, &title, None, body).into_response())
}

fn opt_when(at: Option<DateTime<Utc>>) -> Markup {
    html! { @if let Some(at) = at { (when(at)) } @else { span class="muted" { "—" } } }
}

fn history_body(h: &NotificationHistory) -> Markup {
    html! {
        h1 { "Notification " code { (h.id) } }
        dl class="card" id="notification" {
            dt { "State" } dd id="notification-state" { (h.status) @if let Some(r) = &h.status_reason { " (" (r) ")" } }
            dt { "Channel" } dd { (h.channel) }
            dt { "Template" } dd { code { (h.template_id) } }
            dt { "Participant (keyed hash)" } dd { code { (h.participant_hash) } }
            dt { "VA Notify id" } dd { @if let Some(v) = h.va_notify_id { code { (v) } } @else { span class="muted" { "—" } } }
            dt { "Attempts / sends" } dd { (h.attempt_count) " / " (h.sends) }
            dt { "Created" } dd { (when(h.created_at)) }
            dt { "Sent" } dd { (opt_when(h.sent_at)) }
            dt { "Delivered" } dd { (opt_when(h.delivered_at)) }
            dt { "Next attempt" } dd { (opt_when(h.next_attempt_at)) }
            @if let Some(d) = h.duplicate_of { dt { "Duplicate of" } dd { a href={ "/console/notifications/" (d) } { code { (d) } } } }
            dt { "Clicks" } dd { (h.clicks.by_people) " by people, " (h.clicks.total) " in all" }
        }
        h2 { "Attempts" }
        @if h.attempts.is_empty() { p class="muted" { "No VA Notify call yet." } } @else {
            table id="attempts" {
                caption { "VA Notify calls, in order" }
                thead { tr { th scope="col" class="num" { "#" } th scope="col" { "Started" } th scope="col" { "Outcome" } th scope="col" class="num" { "HTTP status" } th scope="col" { "Error" } th scope="col" { "VA Notify id" } th scope="col" class="num" { "Duration" } } }
                tbody {
                    @for a in &h.attempts {
                        tr {
                            td class="num" { (a.attempt) }
                            td { (when(a.started_at)) }
                            td { (a.outcome) }
                            td class="num" { @if let Some(s) = a.http_status { (s) } @else { "—" } }
                            td { (a.error_class.clone().unwrap_or_default()) }
                            td { @if let Some(v) = a.va_notify_id { code { (v) } } }
                            td class="num" { @if let Some(ms) = a.duration_ms { (ms) " ms" } @else { "in flight" } }
                        }
                    }
                }
            }
        }
        h2 { "Delivery-status callbacks" }
        @if h.callbacks.is_empty() { p class="muted" { "No callback received." } } @else {
            table id="callbacks" {
                caption { "Callbacks from VA Notify, in order" }
                thead { tr { th scope="col" { "Received" } th scope="col" { "Status" } th scope="col" { "Reason" } th scope="col" { "Effect" } th scope="col" { "Provider" } } }
                tbody {
                    @for c in &h.callbacks {
                        tr {
                            td { (when(c.received_at)) }
                            td { (c.status) }
                            td { (c.status_reason.clone().unwrap_or_default()) }
                            td { (c.effect) }
                            td { (c.provider.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        p { a href="/console/notifications" { "Back to notifications" } }
    }
}
