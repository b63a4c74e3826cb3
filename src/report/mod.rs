//! The rollout report (SPEC §9): per stage of a feature toggle, who was reached, what was sent, how much
//! failed and how many clicked, judged against the success criterion, as JSON or as the Markdown
//! "Results" block of a release plan.
//!
//! A **stage** is a period of constant gate settings: consecutive `feature_audit` rows with the same
//! `after` snapshot are one stage, starting at the first of them and ending where the settings change.
//! Its percentage is 0 when paused, 100 when the boolean gate is on, else `percentage_of_actors`.
//! A notification belongs to the stage in which it was requested (`created_at`).
//!
//! Definitions (the same as the `/metrics` counters; README "Reading the report"):
//! - **attempted**: VA Notify accepted it at least once, or it ended `failed`/`dead` without ever being
//!   accepted (`ebg_delivery_attempted_total`). Skipped (no such person / no first name), suppressed,
//!   duplicate and still-pending notifications are not attempts.
//! - **failed** (an *error*): it ended `failed`, `dead`, `permanent_failure` or `temporary_failure`
//!   (`ebg_deliveries_total` with one of those statuses).
//! - **error rate** = failed / attempted; **click-through rate** = unique clicked / delivered (not shown
//!   while click tracking is off: no link was tracked, so zero clicks would be no evidence of anything).
//! - **verdict** ([`judge`], the same rule the guarded rollout applies): NOT ENOUGH DATA below
//!   `report.min_sample` attempted sends, else PASS below `report.max_error_rate`, else FAIL.

mod render;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

pub use render::markdown;

use crate::toggles::EMAILS_ENABLED;

/// What to report on.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    pub feature: String,
    /// Only stages (and the part of them) at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only stages (and the part of them) before this time; default: now.
    pub to: Option<DateTime<Utc>>,
    /// A stage passes when its error rate is below this fraction...
    pub max_error_rate: f64,
    /// ...and at least this many sends were attempted; fewer is not enough data to judge.
    pub min_sample: u64,
    /// Whether links are tracked now; without tracking no click-through rate is reported.
    pub click_tracking: bool,
}

/// Why a report could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The feature gates no channel this service sends.
    #[error("unknown feature: the report covers features that gate a send route ({EMAILS_ENABLED})")]
    UnknownFeature,
    #[error("`from` must be before `to`")]
    EmptyRange,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The whole report.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub feature: String,
    /// The notification channel the feature gates.
    pub channel: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub max_error_rate: f64,
    /// Attempted sends a stage needs before it is judged.
    pub min_sample: u64,
    /// Whether click tracking is on; when off, every `click_through_rate` is null.
    pub click_tracking: bool,
    pub stages: Vec<Stage>,
}

/// Pass/fail of one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Fewer attempted sends than the minimum sample: no evidence either way (never a pass).
    NotEnoughData,
}

/// One stage and its numbers.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Stage {
    /// 1-based position in this report.
    pub number: usize,
    pub start: DateTime<Utc>,
    /// `None` while the stage is still running (and no `to` was given).
    pub end: Option<DateTime<Utc>>,
    /// Share of participants the feature was on for: 0 when paused, 100 for the boolean gate.
    pub percentage: f64,
    pub paused: bool,
    /// Individually enabled actors (a count only: actor ids are participant ids).
    pub actors: usize,
    #[serde(flatten)]
    pub counts: Counts,
    /// failed / attempted; `None` without attempts.
    pub error_rate: Option<f64>,
    /// unique clicks / delivered; `None` without deliveries, and while click tracking is off.
    pub click_through_rate: Option<f64>,
    pub verdict: Verdict,
}

/// Notification counts of one stage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Counts {
    /// Every request received (including suppressed and duplicates).
    pub requests: i64,
    pub suppressed: i64,
    pub duplicates: i64,
    /// Distinct participants among the requests the feature was on for.
    pub unique_participants: i64,
    pub attempted: i64,
    /// Accepted by VA Notify at least once.
    pub sent: i64,
    pub delivered: i64,
    pub failed: i64,
    pub skipped: i64,
    /// Still queued, being sent, or waiting for a retry or resend.
    pub pending: i64,
    /// Notifications a person clicked at least once (HEAD and link scanners excluded).
    pub unique_clicks: i64,
}

/// Parses a report bound: an RFC 3339 time, or a `YYYY-MM-DD` date meaning midnight UTC.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).ok().or_else(|| {
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc())
    })
}

/// The channel whose notifications a feature gates.
pub fn channel_for(feature: &str) -> Option<&'static str> {
    crate::toggles::registration(feature).map(|r| r.channel)
}

/// A period of constant settings, before clipping to the requested range.
#[derive(Clone, Debug, PartialEq)]
struct Period {
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    settings: Value,
}

/// Splits the audit log (`(at, after)` in order) into periods of constant settings.
fn periods(audit: &[(DateTime<Utc>, Value)]) -> Vec<Period> {
    let mut out: Vec<Period> = Vec::new();
    for (at, after) in audit {
        if out.last().is_some_and(|p| p.settings == *after) {
            continue;
        }
        if let Some(last) = out.last_mut() {
            last.end = Some(*at);
        }
        out.push(Period { start: *at, end: None, settings: after.clone() });
    }
    // Two changes in the same instant leave an empty period: it had no time to see any traffic.
    out.retain(|p| p.end.is_none_or(|end| end > p.start));
    out
}

/// The stage percentage a snapshot stands for.
fn percentage(settings: &Value) -> (f64, bool, usize) {
    let paused = settings.get("paused").and_then(Value::as_bool).unwrap_or(false);
    let actors = settings.get("actors").and_then(Value::as_array).map_or(0, Vec::len);
    let pct = if paused {
        0.0
    } else if settings.get("boolean").and_then(Value::as_bool).unwrap_or(false) {
        100.0
    } else {
        match settings.get("percentage_of_actors") {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::String(s)) => s.parse().unwrap_or(0.0),
            _ => 0.0,
        }
    };
    (pct, paused, actors)
}

/// `numerator / denominator`, or `None` without a denominator (no evidence is not a zero rate).
pub fn rate(numerator: i64, denominator: i64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

impl Counts {
    /// failed / attempted: the report's (and the rollout evaluator's) error rate.
    pub fn error_rate(&self) -> Option<f64> {
        rate(self.failed, self.attempted)
    }

    /// unique clicks / delivered.
    pub fn click_through_rate(&self) -> Option<f64> {
        rate(self.unique_clicks, self.delivered)
    }
}

/// The success criterion, shared by the report and the guarded rollout: fewer than `min_sample`
/// attempted sends is not enough data (never a pass, and too few to fail either); otherwise a stage
/// passes when its error rate is below `max_error_rate`, and fails at or above it.
pub fn judge(counts: &Counts, min_sample: u64, max_error_rate: f64) -> Verdict {
    let enough = u64::try_from(counts.attempted).is_ok_and(|a| a >= min_sample.max(1));
    match counts.error_rate() {
        Some(r) if enough && r < max_error_rate => Verdict::Pass,
        Some(_) if enough => Verdict::Fail,
        _ => Verdict::NotEnoughData,
    }
}

/// Builds the report from the audit log and the notifications table.
#[tracing::instrument(skip_all, fields(feature = %request.feature))]
pub async fn build(pool: &PgPool, request: &ReportRequest) -> Result<Report, ReportError> {
    let channel = channel_for(&request.feature).ok_or(ReportError::UnknownFeature)?;
    if let (Some(from), Some(to)) = (request.from, request.to) {
        if from >= to {
            return Err(ReportError::EmptyRange);
        }
    }
    let audit: Vec<(DateTime<Utc>, Value)> =
        sqlx::query_as("select at, after from feature_audit where feature_key = $1 order by at, id")
            .bind(&request.feature)
            .fetch_all(pool)
            .await?;
    let now = Utc::now();
    let mut stages = Vec::new();
    for period in periods(&audit) {
        let start = request.from.map_or(period.start, |from| from.max(period.start));
        let end = match (period.end, request.to) {
            (Some(end), Some(to)) => Some(end.min(to)),
            (end, to) => end.or(to),
        };
        if end.is_some_and(|end| end <= start) || request.to.is_some_and(|to| start >= to) {
            continue;
        }
        let counts = stage_counts(pool, channel, start, end.unwrap_or(now)).await?;
        let (percentage, paused, actors) = percentage(&period.settings);
        let error_rate = counts.error_rate();
        let verdict = judge(&counts, request.min_sample, request.max_error_rate);
        stages.push(Stage {
            number: stages.len() + 1,
            start,
            end,
            percentage,
            paused,
            actors,
            error_rate,
            click_through_rate: counts.click_through_rate().filter(|_| request.click_tracking),
            counts,
            verdict,
        });
    }
    Ok(Report {
        feature: request.feature.clone(),
        channel: channel.to_owned(),
        from: request.from,
        to: request.to,
        max_error_rate: request.max_error_rate,
        min_sample: request.min_sample,
        click_tracking: request.click_tracking,
        stages,
    })
}

/// `ebg-notify report`: builds the report against the configured database and prints it.
pub async fn print(
    config: &crate::config::Config,
    feature: String,
    from: Option<&str>,
    to: Option<&str>,
    format: &str,
) -> anyhow::Result<()> {
    let bound = |name: &str, value: Option<&str>| -> anyhow::Result<Option<DateTime<Utc>>> {
        value
            .map(|v| parse_time(v).ok_or_else(|| anyhow::anyhow!("--{name}: expected an RFC 3339 time or YYYY-MM-DD")))
            .transpose()
    };
    let request = ReportRequest {
        feature,
        from: bound("from", from)?,
        to: bound("to", to)?,
        max_error_rate: config.report.max_error_rate,
        min_sample: config.report.min_sample,
        click_tracking: config.clicks.enabled,
    };
    let pool = crate::db::connect(&config.database).await?;
    let report = build(&pool, &request).await?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", markdown(&report));
    }
    Ok(())
}

/// The SQL behind one stage: a range scan of `notifications_created`, one probe of `clicks`
/// per row. Exposed so a test can EXPLAIN it against a large table.
pub const STAGE_SQL: &str = "
    select
        count(*) as requests,
        count(*) filter (where n.status = 'suppressed') as suppressed,
        count(*) filter (where n.status = 'duplicate') as duplicates,
        count(distinct n.participant_id) filter (where n.status not in ('suppressed', 'duplicate'))
            as unique_participants,
        count(*) filter (where n.sends > 0
            or n.status in ('delivered', 'failed', 'dead', 'permanent_failure', 'temporary_failure')) as attempted,
        count(*) filter (where n.sends > 0 or n.status = 'delivered') as sent,
        count(*) filter (where n.status = 'delivered') as delivered,
        count(*) filter (where n.status in ('failed', 'dead', 'permanent_failure', 'temporary_failure')) as failed,
        count(*) filter (where n.status = 'skipped') as skipped,
        count(*) filter (where n.status in ('queued', 'sending', 'retry_wait')) as pending,
        count(*) filter (where c.counted > 0) as unique_clicks
    from notifications n
    left join clicks c on c.notification_id = n.id
    where n.channel = $1 and n.created_at >= $2 and n.created_at < $3";

/// A stage's numbers: the notifications of `channel` requested in `[start, end)`. The report and the
/// rollout evaluator both count through here, so their numbers cannot disagree.
pub async fn stage_counts<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    channel: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Counts, sqlx::Error> {
    sqlx::query_as(STAGE_SQL).bind(channel).bind(start).bind(end).fetch_one(executor).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::outbox::Status;
    use crate::outbox::lifecycle::{self, ERRORED, PENDING};

    /// The quoted names in the `in (...)` list of the `STAGE_SQL` line that ends with `as {column}`.
    fn listed(column: &str) -> BTreeSet<String> {
        let line = STAGE_SQL
            .lines()
            .find(|l| l.trim_end().trim_end_matches(',').ends_with(&format!("as {column}")) && l.contains(" in ("))
            .unwrap_or_else(|| panic!("no status list for {column}"));
        let list = &line[line.find(" in (").unwrap() + 5..];
        let list = &list[..list.find(')').unwrap()];
        list.split(',').map(|n| n.trim().trim_matches('\'').to_owned()).collect()
    }

    fn group(statuses: &[Status]) -> BTreeSet<String> {
        lifecycle::names(statuses).into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn status_lists_are_the_lifecycle_groups() {
        assert_eq!(listed("pending"), group(&PENDING));
        assert_eq!(listed("failed"), group(&ERRORED));
        let mut attempted = group(&ERRORED);
        attempted.insert(Status::Delivered.as_str().to_owned());
        assert_eq!(listed("attempted"), attempted);
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn stages_are_periods_of_constant_settings() {
        let off = json!({"boolean": false, "actors": [], "percentage_of_actors": 0, "paused": false});
        let quarter = json!({"boolean": false, "actors": [], "percentage_of_actors": 25, "paused": false});
        let audit = vec![
            (at("2026-01-01T00:00:00Z"), quarter.clone()),
            // Same settings again (e.g. a repeated command): still the same stage.
            (at("2026-01-01T06:00:00Z"), quarter.clone()),
            (at("2026-01-02T00:00:00Z"), off.clone()),
            (at("2026-01-02T00:00:00Z"), quarter.clone()),
        ];
        let p = periods(&audit);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].start, p[0].end), (at("2026-01-01T00:00:00Z"), Some(at("2026-01-02T00:00:00Z"))));
        assert_eq!((p[1].start, p[1].end), (at("2026-01-02T00:00:00Z"), None));
    }

    #[test]
    fn percentage_reads_the_gates() {
        assert_eq!(percentage(&json!({"percentage_of_actors": 25})), (25.0, false, 0));
        assert_eq!(percentage(&json!({"percentage_of_actors": "18.157", "actors": ["a", "b"]})), (18.157, false, 2));
        assert_eq!(percentage(&json!({"boolean": true, "percentage_of_actors": 25})), (100.0, false, 0));
        assert_eq!(percentage(&json!({"boolean": true, "paused": true})), (0.0, true, 0));
    }

    #[test]
    fn bounds_accept_times_and_dates() {
        assert_eq!(parse_time("2026-01-02"), Some(at("2026-01-02T00:00:00Z")));
        assert_eq!(parse_time("2026-01-02T03:04:05+01:00"), Some(at("2026-01-02T02:04:05Z")));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn small_samples_are_not_enough_data_whatever_their_rate() {
        let counts = |attempted, failed| Counts { attempted, failed, ..Counts::default() };
        assert_eq!(judge(&counts(0, 0), 100, 0.05), Verdict::NotEnoughData);
        assert_eq!(judge(&counts(2, 0), 100, 0.05), Verdict::NotEnoughData, "the demo's 2 sends do not pass");
        assert_eq!(judge(&counts(99, 99), 100, 0.05), Verdict::NotEnoughData, "nor do 99 failures fail");
        assert_eq!(judge(&counts(100, 4), 100, 0.05), Verdict::Pass);
        assert_eq!(judge(&counts(100, 5), 100, 0.05), Verdict::Fail, "the criterion is below 5%");
        assert_eq!(judge(&counts(1, 0), 0, 0.05), Verdict::Pass, "a minimum of 0 still needs one attempt");
        assert_eq!(judge(&counts(0, 0), 0, 0.05), Verdict::NotEnoughData);
    }

    #[test]
    fn rates_need_a_denominator() {
        assert_eq!(rate(1, 0), None);
        assert_eq!(rate(1, 4), Some(0.25));
    }
}
