//! `ebg-notify rollout ...`: guarded-rollout plans driven from a shell, straight against the database.
//! Overrides go through the same functions as the admin API, so they land in the same audit log
//! (actor `cli:<user>`).

use std::path::PathBuf;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Config;
use crate::rollout::{self, Action, Mode, NewPlan, Plan, PlanDetail, StagePlan};
use crate::toggles::format_percentage;
use crate::toggles::store::AuditContext;

/// `rollout` and its options.
#[derive(Args)]
pub struct RolloutArgs {
    /// Name recorded as the actor (`cli:<name>`); defaults to the OS user ($USER, else the login name of the uid).
    #[arg(long = "as", global = true, value_name = "NAME")]
    as_user: Option<String>,
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Create a plan: from a JSON file (the body of POST /admin/rollouts), or from flags. Without
    /// either, the seed's plan: 2, 25, 50, 75, 100% with a 4 h canary, then a day per stage.
    Create {
        /// JSON plan file; flags below are ignored when given.
        #[arg(long)]
        file: Option<PathBuf>,
        /// A channel's gate: event_bus_gateway_emails_enabled (email),
        /// event_bus_gateway_letter_ready_sms_notifications (sms) or
        /// event_bus_gateway_letter_ready_push_notifications (push).
        #[arg(long, default_value = crate::toggles::EMAILS_ENABLED)]
        feature: String,
        /// `advise` only records what it would do; `auto` changes the gates.
        #[arg(long, value_parser = ["advise", "auto"], default_value = "advise")]
        mode: String,
        /// Stage percentages, in order.
        #[arg(long, value_delimiter = ',', default_value = "2,25,50,75,100")]
        stages: Vec<f64>,
        /// Minimum dwell per stage (`90s`, `30m`, `4h`, `1d` or seconds): one value for every stage, or one
        /// per stage.
        #[arg(long, value_delimiter = ',', default_value = "4h,1d,1d,1d,1d")]
        dwell: Vec<String>,
        /// Minimum attempted sends per stage before it is judged.
        #[arg(long, default_value_t = rollout::DEFAULT_MIN_SENDS)]
        min_sends: u64,
        /// A stage fails when its error rate reaches this fraction.
        #[arg(long, default_value_t = rollout::DEFAULT_MAX_ERROR_RATE)]
        max_error_rate: f64,
        /// A stage's click-through rate must be at least this fraction of the previous stage's.
        #[arg(long)]
        min_ctr_ratio: Option<f64>,
    },
    /// One plan with its decision log.
    Show {
        id: Uuid,
        /// Print JSON (as GET /admin/rollouts/:id) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Plans, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Pause the plan (and, for an auto plan, the feature: kill switch, gates preserved).
    Pause {
        id: Uuid,
        #[arg(long)]
        reason: String,
    },
    /// Resume a paused plan; its current stage starts over.
    Resume {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Move to the next stage now, whatever the numbers.
    Advance {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop the plan for good; the gates stay as they are.
    Abort {
        id: Uuid,
        #[arg(long)]
        reason: String,
    },
}

/// Runs one `rollout` verb and prints its result.
pub async fn run(config: Config, args: RolloutArgs) -> anyhow::Result<()> {
    let pool = super::open_toggle_database(&config).await?;
    let actor = super::cli_actor(args.as_user);
    let (id, action, reason) = match args.command {
        RolloutCommand::Create { file, feature, mode, stages, dwell, min_sends, max_error_rate, min_ctr_ratio } => {
            let new = match file {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str(&text).with_context(|| format!("{} is not a rollout plan", path.display()))?
                }
                None => {
                    let mode = if mode == "auto" { Mode::Auto } else { Mode::Advise };
                    let stages = stages_from_flags(&stages, &dwell, min_sends)?;
                    NewPlan { feature, stages, max_error_rate, min_ctr_ratio, mode }
                }
            };
            let plan = rollout::create(&pool, &new, &actor).await?;
            return show(&pool, plan.id, false).await;
        }
        RolloutCommand::Show { id, json } => return show(&pool, id, json).await,
        RolloutCommand::List { limit } => return list(&pool, limit).await,
        RolloutCommand::Pause { id, reason } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must not be blank");
            (id, Action::Pause, Some(reason))
        }
        RolloutCommand::Resume { id, reason } => (id, Action::Resume, reason),
        RolloutCommand::Advance { id, reason } => (id, Action::Advance, reason),
        RolloutCommand::Abort { id, reason } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must not be blank");
            (id, Action::Abort, Some(reason))
        }
    };
    let ctx = AuditContext { actor, reason, request_id: None };
    rollout::override_plan(&pool, id, action, &ctx, Utc::now()).await?;
    show(&pool, id, false).await
}

fn stages_from_flags(percentages: &[f64], dwell: &[String], min_sends: u64) -> anyhow::Result<Vec<StagePlan>> {
    let dwell: Vec<u64> = dwell
        .iter()
        .map(|d| parse_duration(d).with_context(|| format!("--dwell: {d:?} is not a duration like 90s, 30m, 4h, 1d")))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(
        dwell.len() == 1 || dwell.len() == percentages.len(),
        "--dwell: give one duration for every stage, or one per stage ({} stages)",
        percentages.len()
    );
    Ok(percentages
        .iter()
        .enumerate()
        .map(|(i, &percentage)| StagePlan {
            percentage,
            min_dwell_seconds: if dwell.len() == 1 { dwell[0] } else { dwell[i] },
            min_sends,
        })
        .collect())
}

/// `90`, `90s`, `30m`, `4h`, `1d` → seconds.
fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: u64 = number.trim().parse().ok()?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

async fn show(pool: &PgPool, id: Uuid, json: bool) -> anyhow::Result<()> {
    let detail = rollout::detail(pool, id).await?.with_context(|| format!("no rollout plan {id}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        print!("{}", describe(&detail));
    }
    Ok(())
}

async fn list(pool: &PgPool, limit: i64) -> anyhow::Result<()> {
    anyhow::ensure!((1..=500).contains(&limit), "--limit must be from 1 to 500");
    let plans = rollout::list(pool, limit).await?;
    if plans.is_empty() {
        println!("no rollout plans yet (create one with `ebg-notify rollout create`)");
    }
    for plan in plans {
        println!("{}", summary(&plan));
    }
    Ok(())
}

/// `id  feature  mode  state  stage i/n (pct)  created`
fn summary(plan: &Plan) -> String {
    format!(
        "{}\t{}\t{}\t{}\tstage {}/{} ({})\tcreated {} by {}",
        plan.id,
        plan.feature,
        plan.mode.as_str(),
        plan.state.as_str(),
        plan.current_stage + 1,
        plan.stages.len(),
        plan.stage().map_or_else(|| "-".to_owned(), |s| format!("{}%", format_percentage(s.percentage))),
        plan.created_at.to_rfc3339(),
        plan.created_by,
    )
}

/// A plan as text: its stages (the current one marked) and its decision log.
pub fn describe(detail: &PlanDetail) -> String {
    use std::fmt::Write;
    let plan = &detail.plan;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "plan: {}", plan.id);
    let _ = writeln!(out, "feature: {}\nmode: {}\nstate: {}", plan.feature, plan.mode.as_str(), plan.state.as_str());
    let _ = writeln!(
        out,
        "criteria: error rate < {}{}",
        pct(plan.max_error_rate),
        plan.min_ctr_ratio.map(|r| format!(", click-through rate >= {r} x previous stage")).unwrap_or_default()
    );
    for (i, s) in plan.stages.iter().enumerate() {
        let marker = if i64::try_from(i).ok() == Some(i64::from(plan.current_stage)) { ">" } else { " " };
        let _ = writeln!(
            out,
            "{marker} stage {}: {}%  dwell >= {}s  sample >= {} sends",
            i + 1,
            format_percentage(s.percentage),
            s.min_dwell_seconds,
            s.min_sends
        );
    }
    if let Some(at) = plan.stage_started_at {
        let _ = writeln!(out, "stage started: {}", at.to_rfc3339());
    }
    let _ = writeln!(out, "decisions:");
    for d in &detail.decisions {
        let _ = writeln!(
            out,
            "  {}  stage {}  {} ({}){}  by {}  {}",
            d.at.to_rfc3339(),
            d.stage + 1,
            d.decision,
            d.reason,
            if d.applied { " applied" } else { "" },
            d.actor,
            rollout::evidence_line(&d.evidence),
        );
    }
    out
}

fn pct(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("4h"), Some(14_400));
        assert_eq!(parse_duration("1d"), Some(86_400));
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("h"), None);
    }

    #[test]
    fn flags_make_the_seeds_plan() {
        let dwell: Vec<String> = ["4h", "1d", "1d", "1d", "1d"].map(String::from).to_vec();
        let stages = stages_from_flags(&[2.0, 25.0, 50.0, 75.0, 100.0], &dwell, 100).unwrap();
        assert_eq!(stages, rollout::default_stages());
        let one = stages_from_flags(&[2.0, 100.0], &["10s".to_owned()], 5).unwrap();
        assert!(one.iter().all(|s| s.min_dwell_seconds == 10 && s.min_sends == 5));
        assert!(stages_from_flags(&[2.0, 100.0], &dwell, 5).is_err());
    }
}
