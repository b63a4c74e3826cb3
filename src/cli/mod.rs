//! The `ebg-notify` binary's verbs (SPEC §11). `main.rs` only calls [`run`].

mod flags;
mod report;
mod rollout;
pub mod simulate;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::Config;
use crate::{auth, db, telemetry};
use simulate::{SimulateOptions, simulate};

#[derive(Parser)]
#[command(name = "ebg-notify", version, about = "Notification gateway for the VA Event Bus Gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and run delivery workers (the default).
    Serve,
    /// Apply database migrations and exit (the production deploy step).
    Migrate,
    /// Print a development service-account token for EBG's routes (local profile only).
    Token {
        /// Participant id placed in `user_attributes.participant_id`.
        #[arg(long)]
        participant_id: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// A route the token may call: send_email, send_sms, send_push or send_notifications (or its path or
        /// scope URL). Repeat for several; default send_email.
        #[arg(long = "scope", value_name = "ROUTE", default_value = "send_email")]
        scopes: Vec<String>,
        /// Print this many tokens, one per line, for consecutive participant ids from `participant_id`
        /// (bench/ fills the token cache with them).
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Inspect and change feature toggles directly in the database (same audit trail as the admin API).
    Flags(flags::FlagsArgs),
    /// Print the rollout report: per toggle stage, users, sent, delivered, error rate, click-through rate.
    Report {
        /// A channel's gate: event_bus_gateway_emails_enabled (email),
        /// event_bus_gateway_letter_ready_sms_notifications (sms) or
        /// event_bus_gateway_letter_ready_push_notifications (push).
        #[arg(long, default_value = crate::toggles::EMAILS_ENABLED)]
        feature: String,
        /// Start of the period: RFC 3339 time or YYYY-MM-DD.
        #[arg(long)]
        from: Option<String>,
        /// End of the period (exclusive): RFC 3339 time or YYYY-MM-DD; default now.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_parser = ["markdown", "json"], default_value = "markdown")]
        format: String,
    },
    /// Guarded rollout plans: create, show, list, and the operator's overrides.
    Rollout(rollout::RolloutArgs),
    /// Run the seed's release plan end to end in minutes: the service in-process against a fresh
    /// database of its own, synthetic traffic, a simulated VA Notify; prints progress, then the report.
    #[command(after_help = SIMULATE_EXIT_CODES)]
    Simulate {
        /// Share of sends VA Notify fails (half as 400s, half as permanent-failure callbacks).
        #[arg(long, default_value_t = SimulateOptions::default().failure_rate)]
        failure_rate: f64,
        /// Share of delivered notifications whose link is clicked.
        #[arg(long, default_value_t = SimulateOptions::default().click_rate)]
        click_rate: f64,
        /// Minimum dwell of every stage, in seconds.
        #[arg(long, default_value_t = SimulateOptions::default().stage_seconds)]
        stage_seconds: u64,
        /// Distinct synthetic participants.
        #[arg(long, default_value_t = SimulateOptions::default().participants)]
        participants: u64,
        /// Requests per second.
        #[arg(long, default_value_t = SimulateOptions::default().rate)]
        rate: u32,
        /// Attempted sends a stage needs before it is judged.
        #[arg(long, default_value_t = SimulateOptions::default().min_sends)]
        min_sends: u64,
        /// Keep the simulation's database (printed at the start) instead of dropping it.
        #[arg(long)]
        keep: bool,
        /// Channels to roll out, comma-separated (email, sms, push): one plan per channel's gate with
        /// the same stages, traffic through send_notifications, one report per channel.
        #[arg(long, default_value = "email", value_parser = parse_channels_arg)]
        channels: ChannelList,
    },
    /// One notification's history as a timeline: state, every attempt, every callback, clicks. The
    /// participant appears only as the keyed hash the logs use.
    Show {
        /// Notification id (the `id` send_email answers with).
        id: uuid::Uuid,
        /// Print JSON (as GET /admin/notifications/{id}) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Requeue notifications that ended `failed` or `dead` (after fixing the cause).
    Replay {
        /// Only this state.
        #[arg(long, value_parser = ["failed", "dead"], default_value = "dead")]
        status: String,
        /// Only rows created at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only these notification ids (repeatable).
        #[arg(long = "id")]
        ids: Vec<uuid::Uuid>,
        /// Count what would be requeued, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Send the `suppressed` notifications of a period and channel to the Veterans its gate enables now
    /// (as `POST /admin/notifications/release`; audited as `cli:$USER` or `--as`). SMS and push gates are
    /// keyed by ICN: each participant is resolved through MPI (`[mpi]`) first.
    Release {
        /// The gate deciding, and so the channel released.
        #[arg(long, default_value = crate::toggles::EMAILS_ENABLED,
              value_parser = clap::builder::PossibleValuesParser::new(crate::toggles::gates()))]
        feature: String,
        /// Rows created at or after this RFC 3339 time.
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// Rows created before this RFC 3339 time; default: everything recorded so far.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Count what would be released, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        reason: Option<String>,
        /// Audit as `cli:NAME` instead of the OS user.
        #[arg(long = "as")]
        as_user: Option<String>,
    },
    /// Delete what is older than `retention.days` now, as the service's retention job does (batches of
    /// `retention.batch_size`); rows still waiting for delivery are never deleted.
    Retention {
        /// Keep this many days instead of `retention.days`.
        #[arg(long)]
        days: Option<u32>,
    },
}

/// `--channels`, parsed.
#[derive(Clone, Debug)]
struct ChannelList(Vec<crate::notify::Channel>);

fn parse_channels_arg(text: &str) -> Result<ChannelList, String> {
    simulate::parse_channels(text).map(ChannelList).map_err(|e| e.to_string())
}

/// Exit status of `simulate` when the plan ended PAUSED (the error rate broke the threshold): a run
/// that did what it was asked, with a verdict a script can tell from COMPLETED (0).
pub const EXIT_PAUSED: u8 = 3;

const SIMULATE_EXIT_CODES: &str = "Exit status: 0 when the plan COMPLETED (every stage passed), 3 when it \
                                   ended PAUSED (a stage broke the error-rate threshold), 1 on any other end or \
                                   error. With several --channels: 0 when every plan completed, 3 when one \
                                   paused.";

/// Parses the command line and runs the verb; the exit status is success unless a verb says otherwise
/// (`simulate` ending PAUSED is [`EXIT_PAUSED`]).
pub async fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let (mut config, warnings) = Config::load_with_warnings(std::env::vars())?;
    let command = cli.command.unwrap_or(Command::Serve);
    if matches!(command, Command::Simulate { .. }) {
        // The simulation prints its own progress; the service's info logs would bury it.
        config.telemetry.log_filter = "warn".to_owned();
        config.telemetry.log_format = crate::config::LogFormat::Pretty;
    }
    telemetry::init(&config.telemetry);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    // A taken port is reported before anything touches the database.
    let listener = match command {
        Command::Serve => Some(Application::bind(&config).await?),
        _ => None,
    };
    let private = match command {
        Command::Token { .. } => None,
        _ => db::start_private_if_unreachable(&mut config.database).await?,
    };
    let result = run_command(command, config, listener).await;
    if let Some(server) = private {
        db::stop_private(server).await;
    }
    result
}

/// The error and its causes on one line each cause once: sqlx and thiserror messages often repeat the
/// text of their source, which `{:#}` would print two or three times.
pub fn render_error(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run_command(command: Command, config: Config, listener: Option<TcpListener>) -> anyhow::Result<ExitCode> {
    let done = match command {
        Command::Simulate {
            failure_rate,
            click_rate,
            stage_seconds,
            participants,
            rate,
            min_sends,
            keep,
            channels,
        } => {
            let options = SimulateOptions {
                failure_rate,
                click_rate,
                stage_seconds,
                participants,
                rate,
                min_sends,
                keep,
                channels: channels.0,
            };
            let result = simulate(&config, options).await?;
            return match result.state {
                crate::rollout::State::Completed => Ok(ExitCode::SUCCESS),
                crate::rollout::State::Paused => Ok(ExitCode::from(EXIT_PAUSED)),
                other => Err(anyhow::anyhow!("the simulation ended {}", other.as_str())),
            };
        }
        Command::Serve => match listener {
            Some(listener) => serve(config, listener).await,
            None => anyhow::bail!("serve needs a bound listener"),
        },
        Command::Migrate => {
            let pool = db::connect(&config.database).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token { participant_id, ttl, scopes, count } => {
            anyhow::ensure!(
                config.profile == crate::config::Profile::Local,
                "`token` mints development tokens and is refused outside the local profile"
            );
            anyhow::ensure!(
                auth::is_valid_participant_id(&participant_id),
                "--participant-id must be 1 to {} digits (a BGS participant id); the service answers 422 to anything else",
                auth::MAX_PARTICIPANT_ID_LEN
            );
            let mut paths = Vec::with_capacity(scopes.len());
            for scope in &scopes {
                let path = auth::scope_path(scope, &config.auth.scope_base_url)
                    .map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
            let ttl = Duration::from_secs(ttl);
            if count == 1 {
                println!("{}", auth::mint_dev_token_for(&config.auth, &participant_id, ttl, &paths)?);
                return Ok(ExitCode::SUCCESS);
            }
            let first: u64 = participant_id.parse().context("--count needs a numeric --participant-id")?;
            for i in 0..count {
                let id = (first + i).to_string();
                println!("{}", auth::mint_dev_token_for(&config.auth, &id, ttl, &paths)?);
            }
            Ok(())
        }
        Command::Report { feature, from, to, format } => {
            report::print(&config, feature, from.as_deref(), to.as_deref(), &format).await
        }
        Command::Replay { status, since, ids, dry_run } => replay(config, &status, since, &ids, dry_run).await,
        Command::Show { id, json } => show(config, id, json).await,
        Command::Release { feature, from, to, dry_run, reason, as_user } => {
            release(config, ReleaseArgs { feature, from, to, dry_run, reason, as_user }).await
        }
        Command::Retention { days } => retention(config, days).await,
        Command::Flags(args) => flags::run(config, args).await,
        Command::Rollout(args) => rollout::run(config, args).await,
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// Opens the database for a verb that works on it directly (migrating first when the profile
/// migrates at startup) and makes sure the features this service uses exist.
async fn open_toggle_database(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let pool = db::connect(&config.database).await?;
    if config.database.migrate_on_start {
        db::migrate(&pool).await?;
    }
    crate::toggles::Toggles::register_known_features(&pool).await.context("could not register features")?;
    Ok(pool)
}

/// Who a CLI change is audited as: `cli:` and the `--as` name, else `$USER`, else the login name of the
/// process's uid (containers and CI often leave `$USER` unset); `unknown` only when the uid has no name.
fn cli_actor(as_user: Option<String>) -> String {
    let named = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let user = named(as_user)
        .or_else(|| named(std::env::var("USER").ok()))
        .or_else(|| named(whoami::fallible::username().ok()))
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{user}")
}

/// Rows as columns aligned with two spaces between them; the first row is the header. The last column
/// is not padded, so long reasons do not leave trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (c, value) in row.iter().enumerate() {
            if c == last {
                out.push_str(value);
            } else {
                out.push_str(value);
                out.push_str(&" ".repeat(widths[c] - value.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

async fn serve(config: Config, listener: TcpListener) -> anyhow::Result<()> {
    let app = Application::build_on(config, listener).await.context("startup failed")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await.context("server error")
}

/// Cancels `token` on SIGTERM (orchestrators) or Ctrl-C (developers).
async fn stop_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}

/// Requeued per statement: small enough that one batch holds few row locks, large enough that a big
/// replay is a few hundred statements.
const REPLAY_BATCH: usize = 500;

async fn replay(
    config: Config,
    status: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
    ids: &[uuid::Uuid],
    dry_run: bool,
) -> anyhow::Result<()> {
    use crate::outbox::replay::{ReplayFilter, replay_candidates, requeue};
    let pool = db::connect(&config.database).await?;
    let filter = ReplayFilter { status: status.to_owned(), since, ids: ids.to_vec() };
    let candidates = replay_candidates(&pool, &filter).await?;
    if dry_run {
        println!("would requeue {} notification(s) in state {status}", candidates.len());
        return Ok(());
    }
    let total = candidates.len() as u64;
    let mut progress = crate::progress::Progress::new("replay", Some(total));
    let (mut seen, mut requeued) = (0u64, 0u64);
    for batch in candidates.chunks(REPLAY_BATCH) {
        requeued += requeue(&pool, status, batch).await?;
        seen += batch.len() as u64;
        progress.update(seen, format!("{requeued} requeued"));
    }
    progress.finish(seen, format!("{requeued} requeued"));
    println!("requeued {requeued} notification(s) in state {status}");
    Ok(())
}

/// The `release` verb's arguments.
struct ReleaseArgs {
    feature: String,
    from: chrono::DateTime<chrono::Utc>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    dry_run: bool,
    reason: Option<String>,
    as_user: Option<String>,
}

/// `release`: the admin route's release, against the database, with the toggle as it is there now and
/// MPI as `[mpi]` configures it (ICN-keyed gates).
async fn release(config: Config, args: ReleaseArgs) -> anyhow::Result<()> {
    use crate::toggles::release::{ReleaseRequest, release_suppressed};
    let ReleaseArgs { feature, from, to, dry_run, reason, as_user } = args;
    anyhow::ensure!(to.is_none_or(|to| from < to), "--from must be before --to");
    let mpi = crate::contacts::Mpi::from_config(&config.mpi)?;
    let pool = open_toggle_database(&config).await?;
    let toggles = crate::toggles::Toggles::load(pool.clone()).await.context("could not read the toggles")?;
    let request = ReleaseRequest { feature, from, to, dry_run, duplicate_window: config.accept.duplicate_window() };
    let ctx = crate::toggles::store::AuditContext { actor: cli_actor(as_user), reason, request_id: None };
    // One transaction decides and queues everything, so there is no count to show until it ends.
    let progress = crate::progress::Progress::new("release", None);
    let outcome = release_suppressed(&pool, &toggles.snapshot(), &mpi, &request, &ctx).await?;
    progress.finish(outcome.suppressed, format!("{} released", outcome.released));
    let verb = if dry_run { "would release" } else { "released" };
    println!(
        "{verb} {} of {} suppressed {} notification(s); {} still disabled, {} covered by another send, {} unresolved{}",
        outcome.released,
        outcome.suppressed,
        outcome.channel,
        outcome.still_disabled,
        outcome.duplicates,
        outcome.unresolved,
        unresolved_detail(&outcome.unresolved_reasons),
    );
    Ok(())
}

/// ` (deceased 1, person_not_found 2)` for the release line; empty when every participant was resolved.
fn unresolved_detail(reasons: &std::collections::BTreeMap<String, u64>) -> String {
    if reasons.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = reasons.iter().map(|(reason, count)| format!("{reason} {count}")).collect();
    format!(" ({})", parts.join(", "))
}

/// `retention`: one purge now, with progress per batch.
async fn retention(config: Config, days: Option<u32>) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    let days = days.unwrap_or(config.retention.days);
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
    let mut progress = crate::progress::Progress::new("retention", None);
    let purged = crate::retention::purge_before_with(&pool, cutoff, config.retention.batch_size, |so_far| {
        progress.update(so_far.total(), format!("{} deleted", so_far.total()));
    })
    .await?;
    progress.finish(purged.total(), format!("{} deleted", purged.total()));
    println!(
        "deleted {} notification(s), {} callback event(s), {} click record(s) older than {days} days",
        purged.notifications, purged.events, purged.clicks
    );
    Ok(())
}

/// `show ID`: the history the admin route serves, without the raw participant id.
async fn show(config: Config, id: uuid::Uuid, json: bool) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    let hasher = crate::telemetry::PiiHasher::new(config.telemetry.pii_hash_key.expose());
    let history = crate::outbox::history::history(&pool, id, &hasher, false)
        .await?
        .with_context(|| format!("no notification {id}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&history)?);
    } else {
        print!("{}", history.timeline());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("error communicating with database: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let error = anyhow::Error::new(Repeats(io)).context("startup failed");
        assert_eq!(
            render_error(&error),
            "startup failed: error communicating with database: Connection refused (os error 111)"
        );
        let distinct = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(render_error(&distinct), "outer: middle: inner");
    }
}
