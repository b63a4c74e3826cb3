//! Database: pool, create-if-missing (local profile), embedded migrations, readiness probe.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::DatabaseConfig;

/// Migrations compiled into the binary, so `ebg-notify migrate` needs no files on disk.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Failure to reach or prepare the database at startup.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url is not a valid PostgreSQL URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("could not connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("could not create database `{name}`: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connection options from the configured URL, with statement logging turned down to debug.
pub fn connect_options(cfg: &DatabaseConfig) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions = cfg.url.expose().parse().map_err(DbError::Url)?;
    Ok(options.log_statements(tracing::log::LevelFilter::Debug))
}

/// Opens the pool; creates the database first when configured to (local profile).
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, DbError> {
    let options = connect_options(cfg)?;
    if cfg.create_if_missing {
        create_database_if_missing(&options).await?;
    }
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
        .connect_with(options)
        .await
        .map_err(DbError::Connect)
}

/// The accept writers' own pool (`writers` connections, opened on first use). Every statement and
/// every idle moment inside a transaction is bounded by `transaction_timeout` on the server, so a
/// stalled accept can never hold its rows' locks or commit long after its caller was answered.
pub fn connect_accept_pool(
    cfg: &DatabaseConfig,
    writers: usize,
    transaction_timeout: Duration,
) -> Result<PgPool, DbError> {
    let millis = transaction_timeout.as_millis().to_string();
    let options = connect_options(cfg)?
        .options([("statement_timeout", millis.as_str()), ("idle_in_transaction_session_timeout", millis.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(u32::try_from(writers).unwrap_or(u32::MAX).max(1))
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
        .connect_lazy_with(options))
}

/// Creates the target database through the `postgres` maintenance database if it does not exist.
pub async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), DbError> {
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await.map_err(DbError::Connect)?;
    let exists: bool = sqlx::query_scalar("select exists(select 1 from pg_database where datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .map_err(DbError::Connect)?;
    if !exists {
        // Identifiers cannot be bound as parameters; quote it the way PostgreSQL does.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let created = sqlx::query(&format!("create database {quoted}")).execute(&mut admin).await;
        // Another replica may have created it between the check and here.
        if let Err(e) = created {
            let duplicate = e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "42P04");
            if !duplicate {
                return Err(DbError::Create { name, source: e });
            }
        }
        tracing::info!(database = %name, "created database");
    }
    let _ = admin.close().await;
    Ok(())
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// True when the database answers and every embedded migration has been applied.
pub async fn is_ready(pool: &PgPool) -> bool {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Result<Option<i64>, _> =
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success").fetch_one(pool).await;
    matches!(applied, Ok(Some(v)) if v >= latest)
}

/// True for errors that mean "the database is unreachable right now" (answer 503 so the caller retries).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // SQLSTATE classes: 08 connection exception, 57 operator intervention (shutdown, restart),
            // 53 insufficient resources, 55 "database not accepting connections", 40 serialization
            // failure or deadlock, 28 authentication (a rotated password), 3D database missing.
            db.code()
                .is_some_and(|c| ["08", "57", "53", "55", "40", "28", "3D"].iter().any(|class| c.starts_with(class)))
        }
        _ => false,
    }
}
