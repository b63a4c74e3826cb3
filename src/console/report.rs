//! The rollout report per stage: a table, four server-drawn charts, and the Markdown download.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::ConsoleError;
use super::charts::{Bar, Scale, Threshold, bar_chart};
use super::layout::{Notice, Section, page, pct, query_value, rate, when};
use super::session::Session;
use crate::report::{self, Report, ReportError, ReportRequest, Verdict};
use crate::state::AppState;
use crate::toggles::EMAILS_ENABLED;

/// The report's period and feature, as typed in the form.
#[derive(Deserialize, Default)]
pub struct ReportQuery {
    feature: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

impl ReportQuery {
    fn request(&self, state: &AppState) -> Result<ReportRequest, String> {
        let time = |field: &str, value: &Option<String>| match value.as_deref().map(str::trim).filter(|v| !v.is_empty())
        {
            None => Ok(None),
            Some(v) => report::parse_time(v)
                .map(Some)
                .ok_or_else(|| format!("{field} must be a date (YYYY-MM-DD) or an RFC 3339 time")),
        };
        Ok(ReportRequest {
            feature: self.feature().to_owned(),
            from: time("From", &self.from)?,
            to: time("To", &self.to)?,
            max_error_rate: state.config.report.max_error_rate,
            min_sample: state.config.report.min_sample,
            click_tracking: state.config.clicks.enabled,
        })
    }

    fn feature(&self) -> &str {
        self.feature.as_deref().map(str::trim).filter(|f| !f.is_empty()).unwrap_or(EMAILS_ENABLED)
    }

    fn link_query(&self) -> String {
        let mut q = format!("feature={}", query_value(self.feature()));
        for (name, value) in [("from", &self.from), ("to", &self.to)] {
            if let Some(v) = value.as_deref().filter(|v| !v.trim().is_empty()) {
                q.push_str(&format!("&{name}={}", query_value(v)));
            }
        }
        q
    }
}

async fn build(state: &AppState, query: &ReportQuery) -> Result<Result<Report, String>, ConsoleError> {
    let request = match query.request(state) {
        Ok(r) => r,
        Err(message) => return Ok(Err(message)),
    };
    match report::build(&state.db, &request).await {
        Ok(report) => Ok(Ok(report)),
        Err(ReportError::Database(e)) => Err(e.into()),
        Err(e) => Ok(Err(e.to_string())),
    }
}

fn verdict(v: Verdict) -> maud::Markup {
    match v {
        Verdict::Pass => html! { span class="pass" { "PASS" } },
        Verdict::Fail => html! { span class="fail" { "FAIL" } },
        Verdict::NotEnoughData => html! { span class="muted" { "not enough data" } },
    }
}

/// A count the channel may not measure (push has no delivered count and no clicks).
fn measured(value: Option<i64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

fn stage_label(number: usize, percentage: f64, paused: bool) -> String {
    if paused { format!("{number}: paused") } else { format!("{number}: {}", pct(percentage)) }
}

fn percent_label(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn charts(report: &Report, labels: &[String]) -> maud::Markup {
    let bars = |f: &dyn Fn(&report::Stage) -> Option<f64>| -> Vec<Bar> {
        report.stages.iter().zip(labels).map(|(s, l)| Bar { label: l.clone(), value: f(s) }).collect()
    };
    let limit =
        Threshold { value: report.max_error_rate, label: format!("{} limit", percent_label(report.max_error_rate)) };
    let error = bar_chart(
        "chart-error-rate",
        "Error rate per stage against the limit",
        &bars(&|s| s.error_rate),
        Scale::Fraction,
        Some(&limit),
    );
    let ctr =
        bar_chart("chart-ctr", "Click-through rate per stage", &bars(&|s| s.click_through_rate), Scale::Fraction, None);
    let users = bar_chart(
        "chart-users",
        "Unique users per stage",
        &bars(&|s| Some(s.counts.unique_participants as f64)),
        Scale::Count,
        None,
    );
    let sends = bar_chart("chart-sends", "Sends per stage", &bars(&|s| Some(s.counts.sent as f64)), Scale::Count, None);
    html! {
        div class="charts" {
            figure { figcaption { "Error rate per stage" } (error) }
            figure { figcaption { "Click-through rate" } (ctr) }
            figure { figcaption { "Unique users" } (users) }
            figure { figcaption { "Sends" } (sends) }
        }
    }
}

async fn page_handler(state: &AppState, session: &Session, query: ReportQuery) -> Result<Response, ConsoleError> {
    let built = build(state, &query).await?;
    let (notice, status) = match &built {
        Err(message) => (Some(Notice::error(message.clone())), StatusCode::UNPROCESSABLE_ENTITY),
        Ok(_) => (None, StatusCode::OK),
    };
    let body = html! {
        h1 { "Rollout report" }
        form method="get" action="/console/report" class="row" {
            div { label for="feature" { "Feature" } input id="feature" name="feature" type="text" value=(query.feature()); }
            div { label for="from" { "From (date or time, optional)" } input id="from" name="from" type="text" placeholder="2026-01-01" value=(query.from.clone().unwrap_or_default()); }
            div { label for="to" { "To (exclusive, optional)" } input id="to" name="to" type="text" value=(query.to.clone().unwrap_or_default()); }
            button type="submit" { "Show" }
        }
        @if let Ok(report) = &built {
            p { a href={ "/console/report.md?" (query.link_query()) } download="rollout-report.md" { "Download as Markdown" } }
            @for (column, reason) in &report.unavailable {
                p class="muted" { (column) ": n/a — " (reason) }
            }
            @if report.stages.is_empty() { p class="muted" { "No stage in this period." } } @else {
                @let labels: Vec<String> = report.stages.iter().map(|s| stage_label(s.number, s.percentage, s.paused)).collect();
                (charts(report, &labels))
                table id="report-table" {
                    caption { "Per stage, " (report.channel) " (error rate limit " (percent_label(report.max_error_rate)) ")" }
                    thead { tr {
                        th scope="col" { "Stage" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" class="num" { "Actors" }
                        th scope="col" class="num" { "Users" } th scope="col" class="num" { "Requests" } th scope="col" class="num" { "Sent" }
                        th scope="col" class="num" { "Delivered" } th scope="col" class="num" { "Failed" } th scope="col" class="num" { "Error rate" }
                        th scope="col" class="num" { "Clicks" } th scope="col" class="num" { "CTR" } th scope="col" { "Verdict" }
                    } }
                    tbody {
                        @for (s, label) in report.stages.iter().zip(&labels) {
                            tr {
                                th scope="row" { (label) }
                                td { (when(s.start)) }
                                td { @if let Some(end) = s.end { (when(end)) } @else { "now" } }
                                td class="num" { (s.actors) }
                                td class="num" { (s.counts.unique_participants) }
                                td class="num" { (s.counts.requests) }
                                td class="num" { (s.counts.sent) }
                                td class="num" { (measured(s.counts.delivered)) }
                                td class="num" { (s.counts.failed) }
                                td class="num" { (rate(s.error_rate)) }
                                td class="num" { (measured(s.counts.unique_clicks)) }
                                td class="num" { (rate(s.click_through_rate)) }
                                td { (verdict(s.verdict)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok((status, page(&state.console_key, session, Section::Report, "Rollout report", notice.as_ref(), body))
        .into_response())
}

/// `GET /console/report`.
pub async fn report_page(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<ReportQuery>,
) -> Result<Response, ConsoleError> {
    page_handler(&state, &session, query).await
}

/// `GET /console/report.md`: the same Markdown as `GET /admin/rollout/report?format=markdown`, for a
/// browser session (which carries a cookie, not a bearer token).
pub async fn markdown(
    State(state): State<AppState>,
    _session: Session,
    Query(query): Query<ReportQuery>,
) -> Result<Response, ConsoleError> {
    match build(&state, &query).await? {
        Ok(report) => Ok((
            [
                (CONTENT_TYPE, "text/markdown; charset=utf-8"),
                (CONTENT_DISPOSITION, "attachment; filename=\"rollout-report.md\""),
            ],
            report::markdown(&report),
        )
            .into_response()),
        Err(message) => Err(ConsoleError::BadRequest(message)),
    }
}
