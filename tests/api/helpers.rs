//! Test harness: each test gets the real application on a random port, against its own fresh
//! PostgreSQL database. Upstreams are local HTTP fakes from `ebg-testkit`.
//!
//! Databases are named `ebg_test_<UTC yyyymmddhhmm>_<run id>_<random>` and dropped when the test passes
//! (a failed test keeps its database to look at). The run id is shared by every test process of one
//! run (`TEST_RUN_ID`, else nextest's `NEXTEST_RUN_ID`), so `.ci/run` can drop what its own run left
//! and what is older than a day without touching a run going on in another checkout.
//!
//! The server is `TEST_DATABASE_URL`, else 127.0.0.1:5432, else, when nothing answers there, a private
//! server shared by the whole run (see [`server_url`]).

use std::sync::OnceLock;
use std::time::Duration;

use ebg_notify::app::{AppState, Application};
use ebg_notify::config::Config;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The dev key pair under config/dev/ signs tokens the default config accepts.
pub const DEV_PRIVATE_KEY: &[u8] = include_bytes!("../../config/dev/dev_private_key.pem");
/// A key the service does not trust (forged-signature tests).
pub const OTHER_PRIVATE_KEY: &[u8] = include_bytes!("../fixtures/other_rsa_private.pem");
pub const SEND_EMAIL: &str = "/v0/event_bus_gateway/send_email";
pub const TEMPLATE_ID: &str = "5a3b8e02-51b0-4d5a-8d0e-2c0e9f3c1a11";
pub const PARTICIPANT_ID: &str = "600061742";
pub const ADMIN_TOKEN: &str = "local-admin-token";
pub const CALLBACK_TOKEN: &str = "local-callback-token";

/// PostgreSQL server the tests use: `TEST_DATABASE_URL`, else 127.0.0.1:5432 when it answers, else a private
/// server started from the PostgreSQL programs on this machine (`TEST_DATABASE_URL=private` forces it).
///
/// nextest runs every test in its own process, so the private server is shared through a directory named
/// by the run id (`$TMPDIR/ebg-test-pg-<run id>`, the layout of `ebg_notify::db::private`): the first
/// process creates and starts it, later ones join it, and each holds the shared `users.lock` until it
/// exits (the kernel releases it even on a crash). The process that started the server also starts a
/// small reaper (`sh` + `flock`) that, once no test process has held `users.lock` for 3 seconds, stops
/// the server and removes the directory, holding `start.lock` so no process can join meanwhile. A
/// process arriving after that simply starts a new one.
pub fn server_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        match std::env::var("TEST_DATABASE_URL") {
            // What a machine without a running server gets, on demand (to test the harness itself).
            Ok(url) if url == "private" => return private_server_url(),
            Ok(url) => return url,
            Err(_) => {}
        }
        let default = std::net::SocketAddr::from(([127, 0, 0, 1], 5432));
        if std::net::TcpStream::connect_timeout(&default, Duration::from_secs(1)).is_ok() {
            return "postgres://postgres@127.0.0.1:5432".to_owned();
        }
        private_server_url()
    })
    .clone()
}

/// Stops the run's private server once no test process uses it, and removes its directory.
const REAPER: &str = r#"
d="$1"; idle=0
while sleep 1; do
  [ -d "$d" ] || exit 0
  if flock -x -n "$d/users.lock" true; then idle=$((idle + 1)); else idle=0; fi
  [ "$idle" -ge 3 ] || continue
  exec 9>>"$d/start.lock"
  flock -x 9
  if flock -x -n "$d/users.lock" true; then
    pid=$(head -n 1 "$d/data/postmaster.pid" 2>/dev/null)
    if [ -n "$pid" ]; then
      kill -INT "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    rm -rf "$d"
    exit 0
  fi
  exec 9>&-
  idle=0
done
"#;

fn private_server_url() -> String {
    use ebg_notify::db::private::{PrivateServer, PrivateServerOptions};
    // Kept for the life of the process: it holds this process's share of `users.lock`.
    static SERVER: OnceLock<PrivateServer> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let options = PrivateServerOptions {
            dir: std::env::temp_dir().join(format!("ebg-test-pg-{}", run_id())),
            bin_path: std::env::var("TEST_POSTGRES_BIN_PATH").unwrap_or_default(),
            target: "127.0.0.1:5432".to_owned(),
        };
        let server =
            PrivateServer::start(&options).unwrap_or_else(|e| panic!("{e} (for the tests: TEST_DATABASE_URL)"));
        if server.started() {
            use std::os::unix::process::CommandExt;
            // Started in the background by a shell that exits at once, so the reaper outlives this
            // process without being its child; its own process group keeps nextest's signals away.
            std::process::Command::new("sh")
                .args(["-c", r#"sh -c "$0" ebg-test-pg-reaper "$1" </dev/null >/dev/null 2>&1 &"#, REAPER])
                .arg(server.dir())
                .process_group(0)
                .status()
                .expect("sh and flock are available");
        }
        server
    });
    format!("postgres://postgres@127.0.0.1:{}", server.port())
}

/// Identifies this test run: `TEST_RUN_ID` (set by `.ci/run`), else nextest's run id, else this process.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let raw = std::env::var("TEST_RUN_ID")
            .or_else(|_| std::env::var("NEXTEST_RUN_ID"))
            .unwrap_or_else(|_| format!("p{}", std::process::id()));
        raw.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).take(8).collect()
    })
}

/// The name prefix of every database this run creates: `ebg_test_<UTC yyyymmddhhmm>_<run id>_`.
pub fn database_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("ebg_test_{}_{}_", chrono::Utc::now().format("%Y%m%d%H%M"), run_id()))
}

/// A database for one test (created by whoever connects first with `create_if_missing`), dropped when the
/// test passes; a failing test keeps it for inspection.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// A new name with this run's prefix; nothing is created yet.
    pub fn fresh() -> Self {
        let name = format!("{}{}", database_prefix(), &Uuid::new_v4().simple().to_string()[..16]);
        Self { url: format!("{}/{name}", server_url()), name }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            drop_database(&self.name);
        }
    }
}

/// Drops a database (terminating its connections) from any context, async or not.
pub fn drop_database(name: &str) {
    let sql = format!("drop database if exists \"{}\" with (force)", name.replace('"', "\"\""));
    if let Err(e) = admin_execute(&sql) {
        eprintln!("could not drop test database {name}: {e}");
    }
}

/// Runs one statement on the server's `postgres` database, from any context (a thread of its own).
pub fn admin_execute(sql: &str) -> Result<(), sqlx::Error> {
    let (url, sql) = (format!("{}/postgres", server_url()), sql.to_owned());
    in_own_runtime(async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        sqlx::query(&sql).execute(&mut conn).await?;
        conn.close().await
    })
}

/// A count from the server's `postgres` database, from any context.
pub fn admin_count(sql: &str) -> Result<i64, sqlx::Error> {
    let (url, sql) = (format!("{}/postgres", server_url()), sql.to_owned());
    in_own_runtime(async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        let count = sqlx::query_scalar(&sql).fetch_one(&mut conn).await?;
        conn.close().await?;
        Ok(count)
    })
}

fn in_own_runtime<T: Send + 'static>(work: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(work)
    })
    .join()
    .expect("the admin thread finished")
}

/// A running application.
pub struct TestApp {
    pub address: String,
    pub db: PgPool,
    pub database_url: String,
    pub state: AppState,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Dropped after the app (fields drop after `Drop::drop`): the database goes when the test passes.
    database: Option<TestDatabase>,
}

/// Builder for a test application: extra `EBG_` settings, workers on or off.
pub struct TestAppBuilder {
    env: Vec<(String, String)>,
    database_url: Option<String>,
    /// The database this builder's app owns (none when sharing another app's).
    owned: Option<TestDatabase>,
}

impl TestAppBuilder {
    /// Adds an environment setting, e.g. `("EBG_WORKER__MAX_ATTEMPTS", "3")`.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Runs the delivery loop in the background (tests otherwise drive it with `deliver_due`).
    pub fn with_workers(self) -> Self {
        self.env("EBG_WORKER__ENABLED", "true")
    }

    /// Sends through a fake VA Notify (live mode, no rate limit to speak of).
    pub fn notify(self, fake: &ebg_testkit::FakeVaNotify) -> Self {
        self.env("EBG_NOTIFY__MODE", "live")
            .env("EBG_NOTIFY__BASE_URL", fake.base_url())
            .env("EBG_NOTIFY__API_KEY", fake.api_key())
            .env("EBG_NOTIFY__RATE_PER_MINUTE", 1_000_000)
            .env("EBG_NOTIFY__TIMEOUT_MS", 1_000)
    }

    /// Resolves first names through a fake BGS.
    pub fn bgs(self, fake: &ebg_testkit::FakeBgs) -> Self {
        self.env("EBG_CONTACTS__MODE", "bgs")
            .env("EBG_CONTACTS__BGS_URL", fake.base_url())
            .env("EBG_CONTACTS__TIMEOUT_MS", 1_000)
    }

    /// Sends pushes through the fake VA Notify's push key (its own lane).
    pub fn push(self, fake: &ebg_testkit::FakeVaNotify) -> Self {
        self.env("EBG_NOTIFY__PUSH_API_KEY", fake.push_api_key())
    }

    /// Resolves ICNs through a fake MPI over mutual TLS with `pki`'s client certificate.
    pub fn mpi(mut self, fake: &ebg_testkit::FakeMpi, pki: &ebg_testkit::TestPki) -> Self {
        for (key, value) in mpi_env(fake, pki) {
            self = self.env(key, value);
        }
        self
    }

    /// Every upstream faked: VA Notify (email/SMS key and push key), BGS, MPI over mTLS.
    pub fn upstreams(self, fakes: &Upstreams) -> Self {
        self.notify(&fakes.notify).push(&fakes.notify).bgs(&fakes.bgs).mpi(&fakes.mpi, &fakes.pki)
    }

    /// Shares an existing database (several replicas on one database).
    pub fn database(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self.owned = None;
        self
    }

    /// The configuration this builder would start with (also used to start the real binary).
    pub fn config_env(&self) -> Vec<(String, String)> {
        let database_url = self.database_url.clone().expect("a database is always named");
        let mut env = vec![
            ("EBG_HTTP__ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("EBG_DATABASE__URL".to_owned(), database_url),
            ("EBG_DATABASE__MAX_CONNECTIONS".to_owned(), "10".to_owned()),
            ("EBG_WORKER__ENABLED".to_owned(), "false".to_owned()),
            ("EBG_WORKER__POLL_INTERVAL_MS".to_owned(), "100".to_owned()),
            ("EBG_WORKER__RETRY_BASE_SECONDS".to_owned(), "0".to_owned()),
            ("EBG_WORKER__RETRY_MAX_SECONDS".to_owned(), "0".to_owned()),
            ("EBG_NOTIFY__SANDBOX_DELIVERY_DELAY_MS".to_owned(), "50".to_owned()),
            ("EBG_TOGGLES__REFRESH_INTERVAL_MS".to_owned(), "200".to_owned()),
            // SMS quiet hours follow the real clock; tests that want them configure a window around now.
            ("EBG_SMS__QUIET_HOURS_MODE".to_owned(), "off".to_owned()),
            ("EBG_TELEMETRY__LOG_FORMAT".to_owned(), "json".to_owned()),
            ("EBG_TELEMETRY__LOG_FILTER".to_owned(), std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into())),
        ];
        env.extend(self.env.iter().cloned());
        env
    }

    /// Builds and starts the application.
    pub async fn spawn(mut self) -> TestApp {
        let env = self.config_env();
        let database_url = env.iter().rev().find(|(k, _)| k == "EBG_DATABASE__URL").map(|(_, v)| v.clone()).unwrap();
        let config = Config::load_from(env).expect("test configuration is valid");
        ebg_notify::telemetry::init(&config.telemetry);
        let app = Application::build(config).await.expect("application starts");
        let port = app.port();
        let state = app.state().clone();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            db: state.db.clone(),
            database_url,
            state,
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            shutdown,
            handle: Some(handle),
            database: self.owned.take(),
        }
    }
}

/// A test application with default settings.
pub fn app() -> TestAppBuilder {
    let database = TestDatabase::fresh();
    TestAppBuilder { env: Vec::new(), database_url: Some(database.url.clone()), owned: Some(database) }
}

impl TestAppBuilder {
    /// The builder's environment and the database it names, for a test that starts the real binary
    /// itself: the database is dropped when the returned guard is (if the test passed).
    pub fn into_env(mut self) -> (Vec<(String, String)>, Option<TestDatabase>) {
        (self.config_env(), self.owned.take())
    }
}

/// Standard Sign-in Service claims for EBG's service account, valid for an hour.
pub fn claims(participant_id: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": "http://localhost:3000",
        "aud": "http://localhost:3000",
        "jti": Uuid::new_v4().to_string(),
        "sub": "ebg@va.gov",
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "version": "V0",
        "scopes": [format!("http://localhost:3000{SEND_EMAIL}")],
        "service_account_id": "01b8ebaac5215f84640ade756b5a1b6f",
        "user_attributes": { "participant_id": participant_id },
    })
}

/// Signs `claims` with the development key.
pub fn sign(claims: &Value) -> String {
    ebg_notify::auth::mint_token_with_claims(DEV_PRIVATE_KEY, claims).unwrap()
}

/// A valid token for `participant_id`.
pub fn token_for(participant_id: &str) -> String {
    sign(&claims(participant_id))
}

/// A valid token for `participant_id` scoped to every EBG route (send_email, send_sms, send_push,
/// send_notifications).
pub fn token_for_every_route(participant_id: &str) -> String {
    let mut claims = claims(participant_id);
    claims["scopes"] = ebg_notify::auth::EBG_PATHS.iter().map(|p| format!("http://localhost:3000{p}")).collect();
    sign(&claims)
}

impl TestApp {
    /// `POST send_email` with a JSON body and a valid token for the default participant.
    pub async fn send_email(&self, template_id: &str) -> reqwest::Response {
        self.send_email_as(PARTICIPANT_ID, template_id).await
    }

    pub async fn send_email_as(&self, participant_id: &str, template_id: &str) -> reqwest::Response {
        self.post_send_email()
            .bearer_auth(token_for(participant_id))
            .json(&json!({ "template_id": template_id }))
            .send()
            .await
            .unwrap()
    }

    /// A bare request builder for the send_email route.
    pub fn post_send_email(&self) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{SEND_EMAIL}", self.address))
    }

    /// Turns the emails toggle fully on (boolean gate) and waits until the snapshot has it.
    pub async fn enable_emails(&self) {
        sqlx::query(
            "insert into flipper_gates (feature_key, key, value) values ('event_bus_gateway_emails_enabled', 'boolean', 'true')
             on conflict do nothing",
        )
        .execute(&self.db)
        .await
        .unwrap();
        self.state.toggles.refresh().await.unwrap();
    }

    /// Delivers everything due now, like one tick of the worker loop; returns rows processed.
    pub async fn deliver_due(&self) -> usize {
        self.state.deliverer.run_once().await.unwrap()
    }

    /// Delivers until nothing is due (bounded).
    pub async fn deliver_all(&self) {
        for _ in 0..50 {
            if self.deliver_due().await == 0 {
                return;
            }
        }
        panic!("queue did not drain");
    }

    /// Status and reason of one notification.
    pub async fn status_of(&self, id: Uuid) -> (String, Option<String>) {
        sqlx::query_as("select status, status_reason from notifications where id = $1")
            .bind(id)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Count of notifications by status.
    pub async fn count(&self, status: &str) -> i64 {
        sqlx::query_scalar("select count(*) from notifications where status = $1")
            .bind(status)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Polls `check` until it returns true or `timeout` passes.
    pub async fn eventually<F, Fut>(&self, timeout: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if check().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client.get(format!("{}/metrics", self.address)).send().await.unwrap().text().await.unwrap()
    }

    /// Value of one series in `/metrics`, e.g. `ebg_requests_total{api="send_email",outcome="accepted",channel="email"}`;
    /// 0 when absent. (Counters are process-wide; compare before and after, not absolute values.)
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    }

    /// Stops the server and waits for it to drain. The database stays until the returned guard drops.
    #[must_use = "the database is dropped with the returned guard"]
    pub async fn stop(mut self) -> Option<TestDatabase> {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
        self.database.take()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An app wired to a fake VA Notify and a fake BGS (which knows the default participant as JANE),
/// with the emails toggle on. `extra` adds `EBG_` settings.
pub async fn wired_app(extra: &[(&str, &str)]) -> (TestApp, ebg_testkit::FakeVaNotify, ebg_testkit::FakeBgs) {
    let notify = ebg_testkit::FakeVaNotify::start().await;
    let bgs = ebg_testkit::FakeBgs::start().await;
    bgs.add_person(PARTICIPANT_ID, "JANE");
    let mut builder = app().notify(&notify).bgs(&bgs);
    for (k, v) in extra {
        builder = builder.env(k, v);
    }
    let app = builder.spawn().await;
    app.enable_emails().await;
    (app, notify, bgs)
}

/// Every upstream the channels need, faked: VA Notify (both keys), BGS, MPI over mutual TLS with its PKI.
pub struct Upstreams {
    pub notify: ebg_testkit::FakeVaNotify,
    pub bgs: ebg_testkit::FakeBgs,
    pub mpi: ebg_testkit::FakeMpi,
    /// Holds the certificate files the app reads; dropped (deleted) with the fakes.
    pub pki: ebg_testkit::TestPki,
}

impl Upstreams {
    /// Starts all the fakes, empty: tests add the people they need.
    pub async fn start() -> Self {
        let pki = ebg_testkit::TestPki::generate();
        let mpi = ebg_testkit::FakeMpi::start(&pki).await;
        Self { notify: ebg_testkit::FakeVaNotify::start().await, bgs: ebg_testkit::FakeBgs::start().await, mpi, pki }
    }

    /// Makes `participant` known to BGS (first name `first_name`) and to MPI with `icn`.
    pub fn add_person(&self, participant: &str, first_name: &str, icn: &str) {
        self.bgs.add_person(participant, first_name);
        self.mpi.add_patient(participant, icn, Some(first_name));
    }
}

/// The SMS feature (ICN-keyed, decided by the worker).
pub const SMS_FEATURE: &str = "event_bus_gateway_letter_ready_sms_notifications";
/// The push feature (ICN-keyed, decided by the worker).
pub const PUSH_FEATURE: &str = "event_bus_gateway_letter_ready_push_notifications";
/// The emails feature (participant-keyed, decided at accept).
pub const EMAIL_FEATURE: &str = "event_bus_gateway_emails_enabled";
pub const SEND_NOTIFICATIONS: &str = "/v0/event_bus_gateway/send_notifications";

/// Turns `feature` fully on (boolean gate) in the database `db`; replicas see it at their next refresh.
pub async fn enable_feature(db: &PgPool, feature: &str) {
    sqlx::query(
        "insert into flipper_gates (feature_key, key, value) values ($1, 'boolean', 'true') on conflict do nothing",
    )
    .bind(feature)
    .execute(db)
    .await
    .unwrap();
}

/// A distinct ICN for the `n`th generated person (MPI's shape: ten digits, `V`, six digits).
pub fn icn_for(n: u32) -> String {
    format!("{:010}V{:06}", 1_000_000_000u64 + u64::from(n), 123_456)
}

/// Parses a send_notifications JSON answer into (channel, id) pairs.
pub async fn accepted_channels(response: reqwest::Response) -> Option<Vec<(String, Uuid)>> {
    if response.status() != 200 {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["notifications"]
        .as_array()?
        .iter()
        .map(|n| Some((n["channel"].as_str()?.to_owned(), n["id"].as_str()?.parse().ok()?)))
        .collect()
}

/// Queues one email to `participant` with the default template, as EBG would; returns its id.
pub async fn queue_for(app: &TestApp, participant: &str) -> Uuid {
    request_for(app, participant).await.0
}

/// A send_email request for `participant` with the default template, answered as JSON: (id, status).
pub async fn request_for(app: &TestApp, participant: &str) -> (Uuid, String) {
    let response = app
        .post_send_email()
        .bearer_auth(token_for(participant))
        .header("Accept", "application/json")
        .json(&json!({ "template_id": TEMPLATE_ID }))
        .send()
        .await
        .unwrap();
    accepted(response).await
}

/// Parses a `send_email` JSON answer into (id, status).
pub async fn accepted(response: reqwest::Response) -> (Uuid, String) {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().parse().unwrap(), body["status"].as_str().unwrap().to_owned())
}

/// A spawned process that is killed when the guard drops, so a test that fails (panics) half-way never
/// leaves a server running. Derefs to the `Child`.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

// Every channel wired: the app with VA Notify (email/SMS key and push key), BGS and MPI over mutual TLS
// faked, as `channels.rs`, `channel_policies.rs` and the release tests use it.

pub const SMS_PATH: &str = "/v0/event_bus_gateway/send_sms";
pub const PUSH_PATH: &str = "/v0/event_bus_gateway/send_push";
pub const SMS_TEMPLATE: &str = "7d0c9a8e-2b3c-4f1d-9e8a-0a1b2c3d4e5f";
/// A VEText template id: not a UUID.
pub const PUSH_TEMPLATE: &str = "0EF7C8C9390847D7B3B521426EFF5814";
/// The ICN the fake MPI gives [`PARTICIPANT_ID`].
pub const ICN: &str = "1012345678V123456";
/// A participant MPI does not know (GCID01), while BGS does.
pub const UNKNOWN_TO_MPI: &str = "600099999";
/// The app with every upstream faked: VA Notify (email/SMS key and push key), BGS, MPI over mTLS.
pub struct Wired {
    pub app: TestApp,
    pub notify: ebg_testkit::FakeVaNotify,
    pub mpi: ebg_testkit::FakeMpi,
    _bgs: ebg_testkit::FakeBgs,
    pki: ebg_testkit::TestPki,
}

impl Wired {
    /// The `[mpi]` settings that reach the fake MPI (for the real binary's CLI verbs too).
    pub fn mpi_env(&self) -> Vec<(&'static str, String)> {
        mpi_env(&self.mpi, &self.pki)
    }
}

fn mpi_env(mpi: &ebg_testkit::FakeMpi, pki: &ebg_testkit::TestPki) -> Vec<(&'static str, String)> {
    vec![
        ("EBG_MPI__MODE", "fhir".to_owned()),
        ("EBG_MPI__URL", mpi.base_url()),
        ("EBG_MPI__SENDER_ID", "200ENTF".to_owned()),
        ("EBG_MPI__CLIENT_CERT_PATH", pki.client_cert_path().display().to_string()),
        ("EBG_MPI__CLIENT_KEY_PATH", pki.client_key_path().display().to_string()),
        ("EBG_MPI__CA_PATH", pki.ca_path().display().to_string()),
    ]
}

/// [`wired_with`] no extra settings.
pub async fn wired() -> Wired {
    wired_with(&[]).await
}

/// The app wired to every fake (BGS knows [`PARTICIPANT_ID`] and [`UNKNOWN_TO_MPI`], MPI only the first,
/// as [`ICN`]), emails toggle on; `extra` adds `EBG_` settings; `database` shares an earlier app's
/// database (a restart).
pub async fn wired_on(extra: &[(&str, String)], database: Option<&str>) -> Wired {
    let fakes = Upstreams::start().await;
    fakes.add_person(PARTICIPANT_ID, "JANE", ICN);
    fakes.bgs.add_person(UNKNOWN_TO_MPI, "JOHN");
    let mut builder = app();
    if let Some(url) = database {
        builder = builder.database(url);
    }
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    let app = builder.upstreams(&fakes).spawn().await;
    app.enable_emails().await;
    let Upstreams { notify, bgs, mpi, pki } = fakes;
    Wired { app, notify, mpi, _bgs: bgs, pki }
}

/// [`wired_on`] a fresh database.
pub async fn wired_with(extra: &[(&str, String)]) -> Wired {
    wired_on(extra, None).await
}

/// Turns `feature` fully on (boolean gate) and refreshes the app's snapshot.
pub async fn enable(app: &TestApp, feature: &str) {
    enable_feature(&app.db, feature).await;
    app.state.toggles.refresh().await.unwrap();
}

/// Turns `feature` on for `actor` alone (an actors gate) and refreshes the app's snapshot.
pub async fn enable_actor(app: &TestApp, feature: &str, actor: &str) {
    sqlx::query("insert into flipper_gates (feature_key, key, value) values ($1, 'actors', $2)")
        .bind(feature)
        .bind(actor)
        .execute(&app.db)
        .await
        .unwrap();
    app.state.toggles.refresh().await.unwrap();
}

/// POSTs `body` as JSON to `path` for `participant` (optionally with an Idempotency-Key), asking for JSON.
pub async fn post(app: &TestApp, path: &str, participant: &str, body: Value, key: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}{path}", app.address))
        .bearer_auth(token_for_every_route(participant))
        .header("Accept", "application/json")
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

/// The id of a single-channel JSON answer, which must be `queued`.
pub async fn single(response: reqwest::Response) -> Uuid {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    body["id"].as_str().unwrap().parse().unwrap()
}

/// (channel, status, status_reason, va_notify_id is set, template_id) of a row.
pub async fn row(app: &TestApp, id: Uuid) -> (String, String, Option<String>, bool, String) {
    sqlx::query_as(
        "select channel, status, status_reason, va_notify_id is not null, template_id from notifications where id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// The quiet hours' spread ([`window_around_now`]).
pub const QUIET_HOURS_SPREAD_MINUTES: u32 = 180;

/// `[sms]` settings for a quiet-hours window in UTC from an hour ago to an hour from now (so the real
/// clock is inside it), and the instant the window ends.
pub fn window_around_now(mode: &str) -> (Vec<(&'static str, String)>, chrono::DateTime<chrono::Utc>) {
    use chrono::Timelike;
    let now = chrono::Utc::now().with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap();
    let (start, end) = (now - chrono::Duration::minutes(60), now + chrono::Duration::minutes(60));
    let settings = vec![
        ("EBG_SMS__QUIET_HOURS_MODE", mode.to_owned()),
        ("EBG_SMS__QUIET_HOURS_ZONE", "UTC".to_owned()),
        ("EBG_SMS__QUIET_HOURS_START", start.format("%H:%M").to_string()),
        ("EBG_SMS__QUIET_HOURS_END", end.format("%H:%M").to_string()),
        ("EBG_SMS__QUIET_HOURS_SPREAD_MINUTES", QUIET_HOURS_SPREAD_MINUTES.to_string()),
    ];
    (settings, end)
}
