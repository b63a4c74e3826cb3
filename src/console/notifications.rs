//! Notifications: the queue's depth and oldest due age, a look-up by id, the failures and dead
//! letters of the last days, and their replay (a dry run first, then the confirmed requeue).

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::ConsoleError;
use super::layout::{Notice, Section, csrf_field, duration, page, query_value, when};
use super::session::{AdminForm, Session};
use crate::app::AppState;
use crate::outbox;
use crate::outbox::replay::{REPLAYABLE, ReplayFilter, Summary};

const DEFAULT_DAYS: i64 = 7;
const MAX_DAYS: i64 = 400;
const LIST_LIMIT: i64 = 200;

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
    let lookup = match query.id.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
        None => None,
        Some(raw) => Some(match raw.parse::<Uuid>() {
            Ok(id) => outbox::replay::summary(&state.db, id).await?.ok_or("No notification has that id."),
            Err(_) => Err("A notification id is a UUID, e.g. 5a3b8e02-51b0-4d5a-8d0e-2c0e9f3c1a11."),
        }),
    };
    let preview = preview(&query);
    let key = &state.console_key;
    let body = html! {
        h1 { "Notifications" }
        h2 { "Queue" }
        dl class="card" id="queue" {
            @for name in ["queued", "retry_wait", "sending"] {
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
        @match &lookup {
            Some(Ok(row)) => { (summary_table("lookup", "The notification", std::slice::from_ref(row))) }
            Some(Err(message)) => { p class="notice error" role="alert" { (message) } }
            None => {}
        }
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
                        td { a href={ "/console/notifications?id=" (r.id) } { code { (r.id) } } }
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
    let count = outbox::replay::replay(&state.db, &filter, dry_run).await?;
    if dry_run {
        let location = format!(
            "/console/notifications?preview_status={}&preview_since={}&preview_count={count}#replay",
            query_value(&status),
            query_value(&since.to_rfc3339())
        );
        return Ok(Redirect::to(&location).into_response());
    }
    if count > 0 {
        state.wake_workers.wake();
    }
    tracing::info!(actor = %form.session.name, status = %status, requeued = count, "console replay");
    Ok(Redirect::to(&format!("/console/notifications?requeued={count}")).into_response())
}
