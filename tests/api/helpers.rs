//! Test harness: each test gets the real application on a random port, against its own fresh
//! PostgreSQL database. Upstreams are local HTTP fakes from `ebg-testkit`.

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

/// PostgreSQL server the tests use (`TEST_DATABASE_URL` to point elsewhere).
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
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
}

/// Builder for a test application: extra `EBG_` settings, workers on or off.
pub struct TestAppBuilder {
    env: Vec<(String, String)>,
    database_url: Option<String>,
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

    /// Shares an existing database (several replicas on one database).
    pub fn database(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }

    /// The configuration this builder would start with (also used to start the real binary).
    pub fn config_env(&self) -> Vec<(String, String)> {
        let database_url = self.database_url.clone().unwrap_or_else(fresh_database_url);
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
            ("EBG_TELEMETRY__LOG_FORMAT".to_owned(), "json".to_owned()),
            ("EBG_TELEMETRY__LOG_FILTER".to_owned(), std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into())),
        ];
        env.extend(self.env.iter().cloned());
        env
    }

    /// Builds and starts the application.
    pub async fn spawn(self) -> TestApp {
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
        }
    }
}

/// A test application with default settings.
pub fn app() -> TestAppBuilder {
    TestAppBuilder { env: Vec::new(), database_url: None }
}

/// A URL naming a database that does not exist yet; the app creates and migrates it.
pub fn fresh_database_url() -> String {
    format!("{}/ebg_test_{}", server_url(), Uuid::new_v4().simple())
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

    /// Value of one series in `/metrics`, e.g. `ebg_requests_total{api="send_email",outcome="accepted"}`;
    /// 0 when absent. (Counters are process-wide; compare before and after, not absolute values.)
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
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

/// Queues one email to `participant` with the default template, as EBG would; returns its id.
pub async fn queue_for(app: &TestApp, participant: &str) -> Uuid {
    let response = app
        .post_send_email()
        .bearer_auth(token_for(participant))
        .header("Accept", "application/json")
        .json(&json!({ "template_id": TEMPLATE_ID }))
        .send()
        .await
        .unwrap();
    accepted(response).await.0
}

/// Parses a `send_email` JSON answer into (id, status).
pub async fn accepted(response: reqwest::Response) -> (Uuid, String) {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().parse().unwrap(), body["status"].as_str().unwrap().to_owned())
}
