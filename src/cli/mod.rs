//! The `ebg-notify` binary's verbs (SPEC §11). `main.rs` only calls [`run`].

mod flags;
mod rollout;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::Config;
use crate::rollout::simulate::{SimulateOptions, simulate};
use crate::{auth, db, telemetry};

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
        /// Print this many tokens, one per line, for consecutive participant ids from `participant_id`
        /// (bench/ fills the token cache with them).
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Inspect and change feature toggles directly in the database (same audit trail as the admin API).
    Flags(flags::FlagsArgs),
    /// Print the rollout report: per toggle stage, users, sent, delivered, error rate, click-through rate.
    Report {
        /// Feature key.
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
}

/// Parses the command line and runs the verb.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load()?;
    if matches!(cli.command, Some(Command::Simulate { .. })) {
        // The simulation prints its own progress; the service's info logs would bury it.
        config.telemetry.log_filter = "warn".to_owned();
        config.telemetry.log_format = crate::config::LogFormat::Pretty;
    }
    telemetry::init(&config.telemetry);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let pool = db::connect(&config.database).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token { participant_id, ttl, count } => {
            anyhow::ensure!(
                config.profile == crate::config::Profile::Local,
                "`token` mints development tokens and is refused outside the local profile"
            );
            if count == 1 {
                println!("{}", auth::mint_dev_token(&config.auth, &participant_id, Duration::from_secs(ttl))?);
                return Ok(());
            }
            let first: u64 = participant_id.parse().context("--count needs a numeric --participant-id")?;
            for i in 0..count {
                let id = (first + i).to_string();
                println!("{}", auth::mint_dev_token(&config.auth, &id, Duration::from_secs(ttl))?);
            }
            Ok(())
        }
        Command::Report { feature, from, to, format } => {
            crate::report::print(&config, feature, from.as_deref(), to.as_deref(), &format).await
        }
        Command::Replay { status, since, ids, dry_run } => replay(config, &status, since, &ids, dry_run).await,
        Command::Flags(args) => flags::run(config, args).await,
        Command::Rollout(args) => rollout::run(config, args).await,
        Command::Simulate { failure_rate, click_rate, stage_seconds, participants, rate, min_sends, keep } => {
            let options =
                SimulateOptions { failure_rate, click_rate, stage_seconds, participants, rate, min_sends, keep };
            let result = simulate(&config, options).await?;
            anyhow::ensure!(
                matches!(result.state, crate::rollout::State::Completed | crate::rollout::State::Paused),
                "the simulation ended {}",
                result.state.as_str()
            );
            Ok(())
        }
    }
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

/// Who a CLI change is audited as: `cli:` and the `--as` name, else the OS user.
fn cli_actor(as_user: Option<String>) -> String {
    format!("cli:{}", as_user.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into()))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await.context("startup failed")?;
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

async fn replay(
    config: Config,
    status: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
    ids: &[uuid::Uuid],
    dry_run: bool,
) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    let filter = "status = $1 and ($2::timestamptz is null or created_at >= $2)
                  and (cardinality($3::uuid[]) = 0 or id = any($3))";
    let sql = if dry_run {
        format!("select count(*) from notifications where {filter}")
    } else {
        // The cause was fixed, so the row gets a full retry budget again: the budget counts tries since
        // `attempts_before_send`. `attempts` itself keeps growing, so attempt records never collide.
        format!(
            "with r as (update notifications set status = 'queued', status_reason = 'replayed',
                 attempts_before_send = attempts,
                 next_attempt_at = now(), updated_at = now() where {filter} returning 1) select count(*) from r"
        )
    };
    let count: i64 = sqlx::query_scalar(&sql).bind(status).bind(since).bind(ids).fetch_one(&pool).await?;
    println!("{} {count} notification(s) in state {status}", if dry_run { "would requeue" } else { "requeued" });
    Ok(())
}
