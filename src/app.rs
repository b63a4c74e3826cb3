//! Startup as a value: [`Application::build`] wires the state and binds the listener (port 0 in
//! tests); [`Application::run_until_stopped`] serves until the cancellation token fires, then drains.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{AdminTokens, ServiceAccountVerifier};
use crate::callbacks::CallbackAuth;
use crate::clicks::ClickLinks;
use crate::config::{Config, ContactsMode, MpiMode, NotifyMode};
use crate::contacts::{Contacts, Mpi};
use crate::notify::{NotifyClient, SandboxCallback};
use crate::outbox::worker::{Deliverer, Policies};
use crate::outbox::{AcceptLimits, AcceptQueue, Wakeup};
pub use crate::state::AppState;
use crate::telemetry::PiiHasher;
use crate::toggles::Toggles;
use crate::{db, http, metrics, retention, rollout};

/// Startup failure: the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] db::DbError),
    #[error("channel policies: {0}")]
    Policies(String),
    #[error("could not read toggles: {0}")]
    Toggles(#[source] sqlx::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthInitError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyInitError),
    #[error(transparent)]
    Contacts(#[from] crate::contacts::ContactsInitError),
    #[error(transparent)]
    Mpi(#[from] crate::contacts::MpiInitError),
    #[error("could not listen on {addr}: {cause} (is another ebg-notify running? set EBG_HTTP__ADDR)")]
    Bind { addr: String, cause: std::io::Error },
}

/// A built, bound application.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Embedded migrations the database has applied, and how many there are (for the startup line).
    migrations: (usize, usize),
}

impl Application {
    /// Binds the listener, then connects (creating and migrating the database when configured), loads
    /// toggles and builds the upstream clients.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let listener = Self::bind(&config).await?;
        Self::build_on(config, listener).await
    }

    /// Binds `http.addr`. Done before anything else so a taken port is the first error reported.
    pub async fn bind(config: &Config) -> Result<TcpListener, StartupError> {
        let addr = config.http_addr();
        TcpListener::bind(addr).await.map_err(|cause| StartupError::Bind { addr: addr.to_string(), cause })
    }

    /// Like [`Application::build`] on a listener bound by [`Application::bind`].
    pub async fn build_on(config: Config, listener: TcpListener) -> Result<Self, StartupError> {
        let metrics = metrics::install();
        let addr = config.http_addr();
        let local = listener.local_addr().map_err(|cause| StartupError::Bind { addr: addr.to_string(), cause })?;
        let pool = db::connect(&config.database).await?;
        if config.database.migrate_on_start {
            db::migrate(&pool).await?;
        }
        let migrations = db::migrations_applied(&pool).await;
        Toggles::register_known_features(&pool).await.map_err(StartupError::Toggles)?;
        let toggles = Toggles::load(pool.clone()).await.map_err(StartupError::Toggles)?;

        // In sandbox mode the fake VA Notify reports delivery to our own callback route.
        let sandbox_callback = (config.notify.mode == NotifyMode::Sandbox).then(|| SandboxCallback {
            url: format!("http://{local}/va_notify/callbacks"),
            bearer_token: config.notify.callback_token.expose().to_owned(),
        });
        let notify = NotifyClient::from_config(&config.notify, sandbox_callback)?;
        let contacts = Contacts::from_config(&config.contacts)?;
        let mpi = Mpi::from_config(&config.mpi)?;
        let pii = PiiHasher::new(config.telemetry.pii_hash_key.expose());
        let mut deliverer = Deliverer::new(
            pool.clone(),
            contacts,
            mpi.clone(),
            toggles.clone(),
            notify,
            pii.clone(),
            &config.worker,
            &config.notify,
            Policies::from_config(&config).map_err(StartupError::Policies)?,
        );
        if config.clicks.enabled {
            deliverer = deliverer.with_click_tracking(ClickLinks::from_config(&config.clicks));
        }

        let accept_limits = AcceptLimits {
            duplicate_window: config.accept.duplicate_window(),
            max_batch: config.accept.batch_max,
            writers: config.accept.writers,
            deadline: config.accept.deadline(),
            transaction_timeout: config.accept.transaction_timeout(),
        };
        let accept_pool =
            db::connect_accept_pool(&config.database, accept_limits.writers, accept_limits.transaction_timeout)?;
        let state = AppState {
            verifier: Arc::new(ServiceAccountVerifier::from_config(&config.auth)?),
            admin: Arc::new(AdminTokens::from_config(&config.admin)),
            readers: Arc::new(AdminTokens::readers_from_config(&config.admin)),
            callback_auth: Arc::new(callback_auth(&config)?),
            console_key: crate::console::SessionKey::from_config(&config.console),
            accept: AcceptQueue::start(accept_pool, accept_limits),
            config: Arc::new(config),
            db: pool.clone(),
            toggles,
            deliverer,
            mpi,
            pii,
            metrics,
            wake_workers: Wakeup::new(pool),
            workers_running: Arc::new(AtomicBool::new(false)),
        };
        Ok(Self { listener, state, migrations })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The shared state (tests use it to reach the pool and the deliverer).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` fires: stops accepting, lets in-flight requests finish, stops
    /// claiming and waits (up to `http.shutdown_grace_seconds`) for deliveries in flight.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let state = self.state;
        let grace = state.config.http.shutdown_grace();
        let background = CancellationToken::new();

        let watcher =
            tokio::spawn(state.toggles.clone().watch(state.config.toggles.refresh_interval(), background.clone()));
        let workers = state.config.worker.enabled.then(|| {
            tokio::spawn(state.deliverer.clone().run(
                state.wake_workers.clone(),
                state.workers_running.clone(),
                background.clone(),
            ))
        });

        // Background upkeep runs where deliveries run; accept-only replicas stay lean.
        let upkeep = state.config.worker.enabled.then(|| {
            tokio::spawn(retention::run(state.db.clone(), state.config.retention.clone(), background.clone()))
        });

        // Every replica may run the evaluator: an advisory lock lets one of them act per pass.
        let evaluator =
            state.config.rollout.enabled.then(|| {
                tokio::spawn(rollout::run(state.db.clone(), state.config.rollout.interval(), background.clone()))
            });

        log_started(&state.config, self.listener.local_addr()?, self.migrations);
        let app = http::router(state.clone());
        let served = axum::serve(self.listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned()).await;

        tracing::info!("shutting down: draining deliveries in flight");
        background.cancel();
        let drain = async {
            if let Some(workers) = workers {
                let _ = workers.await;
            }
            if let Some(upkeep) = upkeep {
                let _ = upkeep.await;
            }
            if let Some(evaluator) = evaluator {
                let _ = evaluator.await;
            }
            let _ = watcher.await;
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                "deliveries still in flight after the grace period; their leases will expire and be retried"
            );
        }
        state.db.close().await;
        tracing::info!("ebg-notify stopped");
        served
    }
}

/// Who may post callbacks, built once: `notify.callback_token` and `callbacks.extra_tokens`, and in live
/// mode the API key's secret for `x-enp-signature` (sandbox mode has no key, so bearer tokens only).
/// A key that does not parse is a startup error, never a silently disabled signature check.
fn callback_auth(config: &Config) -> Result<CallbackAuth, StartupError> {
    let tokens = config.callbacks.bearer_tokens(&config.notify);
    let secret = match config.notify.mode {
        NotifyMode::Live => Some(crate::notify::api_key_secret(&config.notify.api_key)?),
        NotifyMode::Sandbox => None,
    };
    Ok(CallbackAuth::new(tokens, secret))
}

/// The one line that says what this process is: version, profile, address, database (host and name,
/// never credentials), whether each upstream is real, click tracking, migrations.
fn log_started(config: &Config, addr: std::net::SocketAddr, (applied, embedded): (usize, usize)) {
    let upstream = |live: bool| if live { "live" } else { "sandbox" };
    // Display (`%`) rather than Debug, so text logs read `profile=local`, not `profile="local"`.
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        profile = %config.profile.as_str(),
        %addr,
        database = %config.database.target(),
        va_notify = %upstream(config.notify.mode == NotifyMode::Live),
        bgs = %upstream(config.contacts.mode == ContactsMode::Bgs),
        mpi = %upstream(config.mpi.mode == MpiMode::Fhir),
        click_tracking = %if config.clicks.enabled { "on" } else { "off" },
        migrations = %format!("{applied}/{embedded} applied"),
        "ebg-notify started"
    );
}
