//! Database: pool, create-if-missing (local profile), a private server when none runs (local profile,
//! [`private`]), embedded migrations, readiness probe.

pub mod private;

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
    /// `target` is host:port and database name, never the password; `cause` the innermost error.
    #[error("could not connect to PostgreSQL at {target}: {cause} (is PostgreSQL running? set EBG_DATABASE__URL)")]
    Connect { target: String, cause: String },
    #[error("could not create database `{name}`: {cause}")]
    Create { name: String, cause: String },
    #[error(transparent)]
    Private(#[from] private::PrivateDbError),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connection options from the configured URL, with statement logging turned down to debug.
pub fn connect_options(cfg: &DatabaseConfig) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions = cfg.url.expose().parse().map_err(DbError::Url)?;
    Ok(options.log_statements(tracing::log::LevelFilter::Debug))
}

/// `host:port/database` of a connection, for messages (the password never appears).
pub fn describe_target(options: &PgConnectOptions) -> String {
    format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or("postgres"))
}

/// The innermost cause of an error: sqlx repeats its source in its own message, so printing the whole
/// chain would say "connection refused" twice.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn connect_error(options: &PgConnectOptions) -> impl Fn(sqlx::Error) -> DbError + '_ {
    move |e| DbError::Connect { target: describe_target(options), cause: root_cause(&e) }
}

/// Opens the pool; creates the database first when configured to (local profile).
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, DbError> {
    let options = connect_options(cfg)?;
    if cfg.create_if_missing {
        create_database_if_missing(&options).await?;
    }
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(cfg.acquire_timeout())
        .connect_with(options.clone())
        .await
        .map_err(connect_error(&options))
}

/// Local profile (`database.private_server`): when the configured server is on this machine and nothing
/// listens there, starts (or joins) the private server and points `cfg.url` at it, keeping the database
/// name. Returns the server, which the caller stops when it is done; `None` when the configured server
/// is used as is (a server on another host is never replaced: that would hide an outage).
pub async fn start_private_if_unreachable(cfg: &mut DatabaseConfig) -> Result<Option<private::PrivateServer>, DbError> {
    if !cfg.private_server {
        return Ok(None);
    }
    let options = connect_options(cfg)?;
    let (host, port) = (options.get_host().to_owned(), options.get_port());
    if !is_this_machine(&host) || answers(&host, port).await {
        return Ok(None);
    }
    let dir = if cfg.private_dir.is_empty() { private::default_dir() } else { Some(cfg.private_dir.clone().into()) };
    let target = format!("{host}:{port}");
    let dir = dir.ok_or_else(|| private::PrivateDbError::NoDataDir { target: target.clone() })?;
    let settings = private::PrivateServerOptions { dir, bin_path: cfg.postgres_bin_path.clone(), target };
    let server = tokio::task::spawn_blocking(move || private::PrivateServer::start(&settings))
        .await
        .map_err(|e| private::PrivateDbError::Failed { dir: String::new(), what: e.to_string() })??;
    let database = options.get_database().unwrap_or("ebg_notify");
    tracing::info!(
        configured = %format!("{host}:{port}"),
        port = server.port(),
        dir = %server.dir().display(),
        "nothing answers at the configured PostgreSQL; using a private server"
    );
    cfg.url = crate::config::Secret::new(server.url(database));
    Ok(Some(server))
}

/// Stops using a private server without blocking the runtime.
pub async fn stop_private(server: private::PrivateServer) {
    let _ = tokio::task::spawn_blocking(move || server.stop()).await;
}

fn is_this_machine(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// True when something accepts TCP connections at host:port within a second.
async fn answers(host: &str, port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect((host, port));
    matches!(tokio::time::timeout(Duration::from_secs(1), connect).await, Ok(Ok(_)))
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
        .acquire_timeout(cfg.acquire_timeout())
        .connect_lazy_with(options))
}

/// Creates the target database through the `postgres` maintenance database if it does not exist.
pub async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), DbError> {
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await.map_err(connect_error(options))?;
    let exists =
        sqlx::query_scalar!(r#"select exists(select 1 from pg_database where datname = $1) as "exists!""#, name)
            .fetch_one(&mut admin)
            .await
            .map_err(connect_error(options))?;
    if !exists {
        // Identifiers cannot be bound as parameters; quote it the way PostgreSQL does. Dynamic by
        // necessity, so not checked at build time.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let created = sqlx::query(&format!("create database {quoted}")).execute(&mut admin).await;
        // Another replica may have created it between the check and here.
        if let Err(e) = created {
            let duplicate = e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "42P04");
            if !duplicate {
                return Err(DbError::Create { name, cause: root_cause(&e) });
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

/// How many of the embedded migrations the database has applied, and how many there are.
/// A database never migrated has applied none.
pub async fn migrations_applied(pool: &PgPool) -> (usize, usize) {
    let embedded: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    // Not checked at build time: `_sqlx_migrations` is sqlx's own table, absent from a database never
    // migrated (this answers 0 then), and not part of `migrations/`.
    let applied: Vec<i64> = sqlx::query_scalar("select version from _sqlx_migrations where success")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    (embedded.iter().filter(|v| applied.contains(v)).count(), embedded.len())
}

/// True when the database answers and every embedded migration has been applied.
pub async fn is_ready(pool: &PgPool) -> bool {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    // Not checked at build time, like `migrations_applied`: a missing table means "not ready".
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
