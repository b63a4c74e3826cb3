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
//! - **per channel** ([`measures`]): email and SMS have delivery receipts (callbacks) and carry the tracked
//!   link (the `host` personalisation); push has neither (VA Notify answers a push with no id and sends no
//!   status; its personalisation is empty), so a push stage has no delivered count and no click-through
//!   rate (null, with the reason in [`Report::unavailable`]), an accepted push is a final outcome, and its
//!   error rate is failed / attempted sends.
//! - **verdict** ([`judge`], the same rule the guarded rollout applies): NOT ENOUGH DATA below
//!   `report.min_sample` attempted sends, else PASS below `report.max_error_rate`, else FAIL.

mod render;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

pub use render::markdown;

use crate::outbox::{CHANNEL_EMAIL, CHANNEL_SMS};
use crate::toggles::{EMAILS_ENABLED, PUSH_ENABLED, SMS_ENABLED};

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
    #[error("{UNKNOWN_FEATURE}")]
    UnknownFeature,
    #[error("`from` must be before `to`")]
    EmptyRange,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What an unknown or non-gate feature is told: the three channel gates by name.
pub const UNKNOWN_FEATURE: &str = "feature must be a channel's gate: event_bus_gateway_emails_enabled (email), \
     event_bus_gateway_letter_ready_sms_notifications (sms) or event_bus_gateway_letter_ready_push_notifications \
     (push)";

/// The features that gate a channel, in the order of [`UNKNOWN_FEATURE`].
pub const GATES: [&str; 3] = [EMAILS_ENABLED, SMS_ENABLED, PUSH_ENABLED];

/// What a channel's messages let the report measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Measures {
    /// VA Notify reports the delivery (status callbacks): email and SMS. Push has none: VA Notify answers a
    /// push with no id and never reports on it, so an accepted push ends `sent` and is its final outcome.
    pub delivery_receipts: bool,
    /// The message carries the click-tracked link (the `host` personalisation becomes the tracker's):
    /// email and SMS. A push's personalisation is empty: nothing to track.
    pub tracked_link: bool,
}

/// The measures of `channel` (an unknown channel measures nothing beyond its sends and failures).
pub fn measures(channel: &str) -> Measures {
    match channel {
        CHANNEL_EMAIL | CHANNEL_SMS => Measures { delivery_receipts: true, tracked_link: true },
        _ => Measures { delivery_receipts: false, tracked_link: false },
    }
}

/// Why push has no delivered count (also said in the Markdown).
pub const NO_DELIVERY_RECEIPTS: &str = "VA Notify gives no delivery receipts for push: an accepted push ends \
     `sent` (reason push_accepted), so there is no delivered count; the error rate is failed / attempted sends";
/// Why push has no click-through rate.
pub const NO_TRACKED_LINK: &str =
    "a push carries no tracked link (its personalisation is empty) and has no delivered count to divide by";
/// Why no click-through rate is shown while tracking is off.
pub const TRACKING_OFF: &str = "click tracking is off (clicks.enabled): no link was tracked";

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
    /// What the channel's messages let the report measure.
    pub measures: Measures,
    /// Columns that are null in every stage, with the reason (e.g. push's `delivered`); absent when every
    /// column is measured.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<String, String>,
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
    /// unique clicks / delivered; `None` without deliveries, while click tracking is off, and always for
    /// push (no tracked link, no delivery receipts).
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
    /// Delivered according to VA Notify's callbacks; `None` for a channel without delivery receipts (push).
    pub delivered: Option<i64>,
    pub failed: i64,
    /// Attempted sends whose outcome is final: delivered or failed, and for push every accepted send.
    pub settled: i64,
    pub skipped: i64,
    /// Still queued, being sent, or waiting for a retry or resend.
    pub pending: i64,
    /// Notifications a person clicked at least once (HEAD and link scanners excluded); `None` for a
    /// channel without a tracked link (push).
    pub unique_clicks: Option<i64>,
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

/// The channel whose notifications a feature gates; `None` for a feature that is not a channel's gate
/// (unknown, or a registered feature that only picks a template, like the universal-link one).
pub fn channel_for(feature: &str) -> Option<&'static str> {
    let registration = crate::toggles::registration(feature)?;
    // The gate of a channel is its first registration (`toggles::feature_for_channel`).
    let gate = crate::toggles::feature_for_channel(registration.channel)?;
    (gate.key == registration.key).then_some(registration.channel)
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

    /// unique clicks / delivered; `None` where either is not measured.
    pub fn click_through_rate(&self) -> Option<f64> {
        rate(self.unique_clicks?, self.delivered?)
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
        sqlx::query!("select at, after from feature_audit where feature_key = $1 order by at, id", request.feature)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| (r.at, r.after))
            .collect();
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
    let measures = measures(channel);
    Ok(Report {
        feature: request.feature.clone(),
        channel: channel.to_owned(),
        from: request.from,
        to: request.to,
        max_error_rate: request.max_error_rate,
        min_sample: request.min_sample,
        click_tracking: request.click_tracking,
        measures,
        unavailable: unavailable(measures, request.click_tracking),
        stages,
    })
}

/// The columns `measures` and the tracking switch leave null, with the reason.
fn unavailable(measures: Measures, click_tracking: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !measures.delivery_receipts {
        out.insert("delivered".to_owned(), NO_DELIVERY_RECEIPTS.to_owned());
    }
    if !measures.tracked_link {
        out.insert("unique_clicks".to_owned(), NO_TRACKED_LINK.to_owned());
        out.insert("click_through_rate".to_owned(), NO_TRACKED_LINK.to_owned());
    } else if !click_tracking {
        out.insert("click_through_rate".to_owned(), TRACKING_OFF.to_owned());
    }
    out
}

/// The SQL behind one stage (`stage.sql`): a range scan of `notifications_created`, one probe of
/// `clicks` per row. Exposed so a test can EXPLAIN it against a large table.
pub const STAGE_SQL: &str = include_str!("stage.sql");

/// A stage's numbers: the notifications of `channel` requested in `[start, end)`. The report and the
/// rollout evaluator both count through here, so their numbers cannot disagree.
pub async fn stage_counts<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    channel: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Counts, sqlx::Error> {
    let m = measures(channel);
    sqlx::query_file_as!(Counts, "src/report/stage.sql", channel, start, end, m.delivery_receipts, m.tracked_link)
        .fetch_one(executor)
        .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::outbox::lifecycle::{self, ERRORED, PENDING};
    use crate::outbox::{CHANNEL_PUSH, Status};

    /// The quoted names in the `in (...)` list of the `STAGE_SQL` line that ends with `as "{column}!"`.
    fn listed(column: &str) -> BTreeSet<String> {
        let line = STAGE_SQL
            .lines()
            .find(|l| l.trim_end().trim_end_matches(',').ends_with(&format!("as \"{column}!\"")) && l.contains(" in ("))
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
        assert_eq!(listed("settled"), attempted, "final outcomes: delivered or errored (plus push's `sent`)");
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
    fn only_the_three_gates_are_reportable() {
        assert_eq!(GATES.map(channel_for), [Some(CHANNEL_EMAIL), Some(CHANNEL_SMS), Some(CHANNEL_PUSH)]);
        assert_eq!(channel_for(crate::notify::templates::UNIVERSAL_LINK_FEATURE), None, "a template switch");
        assert_eq!(channel_for("nope"), None);
        for gate in GATES {
            assert!(UNKNOWN_FEATURE.contains(gate), "the message names {gate}");
        }
    }

    #[test]
    fn push_measures_neither_deliveries_nor_clicks() {
        assert_eq!(measures(CHANNEL_PUSH), Measures { delivery_receipts: false, tracked_link: false });
        assert_eq!(measures(CHANNEL_SMS), Measures { delivery_receipts: true, tracked_link: true });
        let push = Counts { attempted: 10, sent: 10, settled: 10, ..Counts::default() };
        assert_eq!((push.click_through_rate(), push.error_rate()), (None, Some(0.0)));
        let keys: Vec<String> = unavailable(measures(CHANNEL_PUSH), true).into_keys().collect();
        assert_eq!(keys, ["click_through_rate", "delivered", "unique_clicks"]);
        assert!(unavailable(measures(CHANNEL_EMAIL), true).is_empty());
        assert_eq!(unavailable(measures(CHANNEL_SMS), false).len(), 1, "tracking off: the rate only");
    }

    #[test]
    fn rates_need_a_denominator() {
        assert_eq!(rate(1, 0), None);
        assert_eq!(rate(1, 4), Some(0.25));
    }
}
