//! The report as the Markdown "Results" block of a release plan.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::{Report, Stage, Verdict};
use crate::outbox::CHANNEL_SMS;

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn range(stage: &Stage) -> String {
    match stage.end {
        Some(end) => format!("{} – {}", when(stage.start), when(end)),
        None => format!("{} – ongoing", when(stage.start)),
    }
}

fn pct(fraction: Option<f64>) -> String {
    fraction.map_or_else(|| "n/a".to_owned(), |f| format!("{:.2}%", f * 100.0))
}

fn share(percentage: f64) -> String {
    // 25 -> "25%", 18.157 -> "18.157%".
    let text = format!("{percentage:.3}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

fn stage_name(stage: &Stage) -> String {
    if stage.paused { "paused (0%)".to_owned() } else { format!("{} of users", share(stage.percentage)) }
}

fn verdict(stage: &Stage, report: &Report) -> String {
    let max = pct(Some(report.max_error_rate));
    match stage.verdict {
        Verdict::Pass => format!("**PASS** (error rate {} < {max})", pct(stage.error_rate)),
        Verdict::Fail => format!("**FAIL** (error rate {} ≥ {max})", pct(stage.error_rate)),
        Verdict::NotEnoughData => format!(
            "**NOT ENOUGH DATA** ({} attempted, fewer than the {} a stage needs; not a pass)",
            stage.counts.attempted, report.min_sample
        ),
    }
}

fn verdict_short(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::NotEnoughData => "NOT ENOUGH DATA",
    }
}

/// The click-through rate, or why there is none.
fn ctr(stage: &Stage, report: &Report) -> String {
    if !report.measures.tracked_link {
        format!("n/a (no tracked link in {})", report.channel)
    } else if report.click_tracking {
        pct(stage.click_through_rate)
    } else {
        "n/a (click tracking off)".to_owned()
    }
}

/// A count the channel may not measure.
fn count(value: Option<i64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

/// What the `suppressed` count holds for the report's channel.
fn suppressed_by(report: &Report) -> &'static str {
    // Block mode of SMS quiet hours ends rows `suppressed` too (reason sms_quiet_hours).
    if report.channel == CHANNEL_SMS { "suppressed by the toggle or quiet hours" } else { "suppressed by the toggle" }
}

/// The line under the header saying what a channel without delivery receipts cannot show.
fn measures_note(report: &Report) -> Option<String> {
    (!report.measures.delivery_receipts).then(|| {
        format!(
            "Note: the {channel} error rate is failed / attempted sends. VA Notify gives no delivery receipts for \
             {channel} (an accepted {channel} ends `sent`, reason push_accepted), so Delivered and the \
             click-through rate are n/a; an accepted {channel} is its final outcome when a plan judges a stage.\n",
            channel = report.channel
        )
    })
}

/// Renders the report as Markdown: a summary table, then one "Results" block per stage.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "## Rollout results: `{}`\n", report.feature);
    let period = match (report.from, report.to) {
        (Some(from), Some(to)) => format!("{} – {}", when(from), when(to)),
        (Some(from), None) => format!("since {}", when(from)),
        (None, Some(to)) => format!("until {}", when(to)),
        (None, None) => "whole audit history".to_owned(),
    };
    let _ = writeln!(
        out,
        "Channel: {} · Period: {} · Success criterion: error rate < {} with at least {} attempted sends\n",
        report.channel,
        period,
        pct(Some(report.max_error_rate)),
        report.min_sample
    );
    if let Some(note) = measures_note(report) {
        let _ = writeln!(out, "{note}");
    }
    if report.stages.is_empty() {
        let _ = writeln!(out, "No stages: the feature's audit log has no changes in this period.");
        return out;
    }
    let _ = writeln!(out, "| Stage | Dates | Percentage | Unique users | Error rate | Click-through rate | Result |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    for s in &report.stages {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            s.number,
            range(s),
            if s.paused { "paused".to_owned() } else { share(s.percentage) },
            s.counts.unique_participants,
            pct(s.error_rate),
            if report.measures.tracked_link { ctr(s, report) } else { "n/a".to_owned() },
            verdict_short(s.verdict)
        );
    }
    for s in &report.stages {
        let c = &s.counts;
        let _ = writeln!(out, "\n### Stage {}: {}\n", s.number, stage_name(s));
        let _ = writeln!(out, "- Dates: {}", range(s));
        let _ = writeln!(out, "- Unique users: {}", c.unique_participants);
        let _ = writeln!(
            out,
            "- Requests: {} ({}: {}, duplicates: {})",
            c.requests,
            suppressed_by(report),
            c.suppressed,
            c.duplicates
        );
        let _ = writeln!(
            out,
            "- Sent: {} · Delivered: {} · Failed: {} · Skipped: {} · Pending: {}",
            c.sent,
            count(c.delivered),
            c.failed,
            c.skipped,
            c.pending
        );
        let _ = writeln!(out, "- Error rate: {} (failed: {}, attempted: {})", pct(s.error_rate), c.failed, c.attempted);
        if report.measures.tracked_link {
            let _ = writeln!(
                out,
                "- Click-through rate: {} (unique clicks: {}, delivered: {})",
                ctr(s, report),
                count(c.unique_clicks),
                count(c.delivered)
            );
        } else {
            let _ = writeln!(out, "- Click-through rate: {}", ctr(s, report));
        }
        let _ = writeln!(out, "- Result: {}", verdict(s, report));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_drop_trailing_zeros() {
        assert_eq!(share(25.0), "25%");
        assert_eq!(share(18.157), "18.157%");
        assert_eq!(share(0.5), "0.5%");
        assert_eq!(share(100.0), "100%");
    }
}
