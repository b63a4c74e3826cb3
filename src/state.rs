//! The shared state every handler receives: built once by [`crate::app::Application::build`], kept
//! in its own module so `http/` and `console/` depend on it and not on the composition root.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::auth::{AdminTokens, ServiceAccountVerifier};
use crate::callbacks::CallbackAuth;
use crate::config::Config;
use crate::outbox::worker::Deliverer;
use crate::outbox::{AcceptQueue, Wakeup};
use crate::telemetry::PiiHasher;
use crate::toggles::Toggles;

/// Everything a handler needs, built once at startup. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub verifier: Arc<ServiceAccountVerifier>,
    pub admin: Arc<AdminTokens>,
    /// Read-only tokens (`admin.read_tokens`): admin reads and a console session without writes.
    pub readers: Arc<AdminTokens>,
    /// Who may post delivery-status callbacks (bearer tokens, VA Notify's signing secret).
    pub callback_auth: Arc<CallbackAuth>,
    /// Signs console session cookies and CSRF tokens.
    pub console_key: crate::console::SessionKey,
    pub toggles: Toggles,
    pub deliverer: Deliverer,
    /// The ICN directory the deliverer uses (one cache): a release of an ICN-keyed feature asks it too.
    pub mpi: crate::contacts::Mpi,
    pub pii: PiiHasher,
    pub metrics: PrometheusHandle,
    /// Wakes the local delivery loop when a request queues a notification.
    pub wake_workers: Wakeup,
    /// Records send_* requests with group commit.
    pub accept: AcceptQueue,
    /// True while the delivery loop runs (readiness).
    pub workers_running: Arc<AtomicBool>,
}
