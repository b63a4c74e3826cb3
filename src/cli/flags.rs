//! `ebg-notify flags ...` (SPEC §11): the toggle store driven from a shell, straight against the
//! database. Writes go through the same store functions as the admin API, so they land in the same
//! audit log (actor `cli:<user>`) and reach every replica through the same NOTIFY trigger.

use anyhow::Context;
use clap::{Args, Subcommand};
use sqlx::PgPool;

use crate::config::Config;
use crate::toggles::parse_percentage;
use crate::toggles::store::{self, AuditContext, Change, FeatureRecord};

/// `flags` and its options.
#[derive(Args)]
pub struct FlagsArgs {
    /// Name recorded as the actor (`cli:<name>`); defaults to the OS user ($USER, else the login name of the uid).
    #[arg(long = "as", global = true, value_name = "NAME")]
    as_user: Option<String>,
    #[command(subcommand)]
    command: FlagsCommand,
}

#[derive(Subcommand)]
enum FlagsCommand {
    /// One line per feature: state, kill switch, gates.
    List,
    /// One feature in full.
    Show { name: String },
    /// Boolean gate on (clears the other gates, as Flipper does).
    Enable {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Boolean gate off: clears ALL gates (use `pause` to keep the rollout stage).
    Disable {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Percentage of actors, 0–100 (e.g. 2, 25, 2.5).
    Percent {
        name: String,
        percentage: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Add (or with --remove, remove) an actor, e.g. a UAT participant id.
    Actor {
        name: String,
        id: String,
        #[arg(long)]
        remove: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Kill switch on: off for everyone, gates untouched.
    Pause {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Kill switch off: the stored stage applies again.
    Resume {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The feature's audit log, newest first: who, when, what changed (before → after), why.
    Audit {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

/// Runs one `flags` verb and prints its result.
pub async fn run(config: Config, args: FlagsArgs) -> anyhow::Result<()> {
    let pool = super::open_toggle_database(&config).await?;
    let actor = super::cli_actor(args.as_user);
    let ctx = |reason: Option<String>| AuditContext { actor: actor.clone(), reason, request_id: None };
    let (name, change, reason) = match args.command {
        FlagsCommand::List => return list(&pool).await,
        FlagsCommand::Show { name } => return show(&pool, &name).await,
        FlagsCommand::Audit { name, limit } => return audit(&pool, &name, limit).await,
        FlagsCommand::Enable { name, reason } => (name, Change::EnableBoolean, reason),
        FlagsCommand::Disable { name, reason } => (name, Change::DisableBoolean, reason),
        FlagsCommand::Percent { name, percentage, reason } => {
            let pct = parse_percentage(&percentage)
                .with_context(|| format!("percentage must be a number from 0 to 100, got {percentage:?}"))?;
            (name, Change::SetPercentageOfActors(pct), reason)
        }
        FlagsCommand::Actor { name, id, remove, reason } => {
            (name, if remove { Change::RemoveActor(id) } else { Change::AddActor(id) }, reason)
        }
        FlagsCommand::Pause { name, reason } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must not be blank");
            (name, Change::Pause, Some(reason))
        }
        FlagsCommand::Resume { name, reason } => (name, Change::Resume, reason),
    };
    let record = store::apply(&pool, &name, &change, &ctx(reason)).await.with_context(|| format!("flags: {name}"))?;
    print!("{}", describe(&record));
    Ok(())
}

async fn list(pool: &PgPool) -> anyhow::Result<()> {
    for record in store::all_features(pool).await? {
        println!("{}", summary(&record));
    }
    Ok(())
}

async fn show(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let record = store::feature(pool, name).await?.with_context(|| format!("no feature named {name}"))?;
    print!("{}", describe(&record));
    Ok(())
}

async fn audit(pool: &PgPool, name: &str, limit: i64) -> anyhow::Result<()> {
    anyhow::ensure!((1..=500).contains(&limit), "--limit must be from 1 to 500");
    let entries = store::audit_log(pool, name, limit, None).await?;
    if entries.is_empty() {
        println!("no audit entries for {name}");
        return Ok(());
    }
    let mut rows = vec![["ID", "WHEN (UTC)", "ACTOR", "OPERATION", "CHANGE", "REASON"].map(String::from).to_vec()];
    rows.extend(entries.iter().map(|e| {
        vec![
            e.id.to_string(),
            e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            e.actor.clone(),
            e.operation.clone(),
            e.change(),
            reason(e.reason.as_deref()),
        ]
    }));
    print!("{}", super::table(&rows));
    Ok(())
}

/// An audit reason for a terminal: the rollout evaluator records its evidence as JSON, shown as its
/// numbers; a person's reason as written.
fn reason(reason: Option<&str>) -> String {
    match reason {
        None => "-".to_owned(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(evidence @ serde_json::Value::Object(_)) => {
                let line = crate::rollout::evidence_line(&evidence);
                if line.is_empty() { text.to_owned() } else { line }
            }
            _ => text.to_owned(),
        },
    }
}

/// `key  state  paused=yes|no  boolean=.. actors=N percentage_of_actors=.. percentage_of_time=..`
fn summary(r: &FeatureRecord) -> String {
    let gates = r.gates();
    format!(
        "{}\t{}\tpaused={}\tboolean={}\tactors={}\tpercentage_of_actors={}\tpercentage_of_time={}",
        r.key,
        gates.state(),
        yes_no(r.paused),
        gates.boolean,
        gates.actors.len(),
        crate::toggles::format_percentage(gates.percentage_of_actors),
        crate::toggles::format_percentage(gates.percentage_of_time),
    )
}

fn describe(r: &FeatureRecord) -> String {
    let gates = r.gates();
    let actors: Vec<&str> = gates.actors.iter().map(String::as_str).collect();
    format!(
        "feature: {}\nstate: {}\npaused: {}\nboolean: {}\nactors: {}\npercentage_of_actors: {}\npercentage_of_time: {}\n",
        r.key,
        gates.state(),
        yes_no(r.paused),
        gates.boolean,
        if actors.is_empty() { "-".to_owned() } else { actors.join(",") },
        crate::toggles::format_percentage(gates.percentage_of_actors),
        crate::toggles::format_percentage(gates.percentage_of_time),
    )
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
