//! `ebg-notify simulate`: the seed's release plan executed end to end, compressed into minutes.
//!
//! The service runs in-process with the local profile's sandbox contacts against a database of its own
//! (`ebg_simulate_<random>`, created on the configured server and dropped at the end unless `--keep`),
//! so the configured database is never touched. VA Notify is the tests' fake ([`ebg_testkit::FakeVaNotify`]:
//! VA's wire contract, its JWT and schema checks) on loopback, answering the service's real client, with
//! a [`Behaviour`] that fails an even share of sends, posts delivery-status callbacks to the service's
//! real callback route, and follows the click-tracking links in the `host` personalisation like a
//! Veteran would. Synthetic EBG traffic from many participants goes through the
//! real `send_email` route with real service-account tokens, and an `auto` plan with the seed's stages
//! (dwell = `--stage-seconds`) is evaluated every second by the service's own evaluator.
//!
//! Outcomes are spread evenly rather than drawn at random (with `--failure-rate 0.2`, exactly every
//! fifth send fails), so a run is reproducible and its verdicts follow from its settings alone.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::StatusCode;
use chrono::{SecondsFormat, Utc};
use ebg_testkit::FakeVaNotify;
use ebg_testkit::va_notify::{Behaviour, Endpoint, Reply};
use rand::Rng;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::app::Application;
use crate::config::{Config, ContactsMode, NotifyMode, Secret};
use crate::report::{self, ReportRequest};
use crate::rollout::{self, PlanDetail, State};
use crate::toggles::{EMAILS_ENABLED, format_percentage};

/// The seed's stages, in percent of participants.
const STAGES: [f64; 5] = [2.0, 25.0, 50.0, 75.0, 100.0];
/// The template every synthetic request names.
const TEMPLATE_ID: &str = "5a3b8e02-51b0-4d5a-8d0e-2c0e9f3c1a11";
/// Synthetic participant ids start here (nine digits, like real ones).
const FIRST_PARTICIPANT: u64 = 600_000_000;
/// Requests in flight at once, so a slow moment cannot pile up unbounded tasks.
const MAX_IN_FLIGHT: usize = 64;
/// How long the simulated VA Notify waits before posting a delivery status.
const CALLBACK_DELAY: Duration = Duration::from_millis(150);

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulateOptions {
    /// Share of sends that fail (half as VA Notify 400s, half as permanent-failure callbacks).
    pub failure_rate: f64,
    /// Share of delivered notifications whose link is clicked.
    pub click_rate: f64,
    /// Minimum dwell of every stage, in seconds.
    pub stage_seconds: u64,
    /// Distinct synthetic participants.
    pub participants: u64,
    /// Requests per second.
    pub rate: u32,
    /// Attempted sends a stage needs before it is judged.
    pub min_sends: u64,
    /// Keep the simulation's database instead of dropping it.
    pub keep: bool,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        Self {
            failure_rate: 0.01,
            click_rate: 0.4,
            stage_seconds: 30,
            participants: 2000,
            rate: 100,
            // Above 1 / 0.05 = 20: with the default 1% failures (one send in a hundred), no window of
            // at least this many sends can reach a 5% error rate by the spacing of failures alone.
            min_sends: 40,
            keep: false,
        }
    }
}

impl SimulateOptions {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((0.0..=1.0).contains(&self.failure_rate), "--failure-rate must be from 0 to 1");
        anyhow::ensure!((0.0..=1.0).contains(&self.click_rate), "--click-rate must be from 0 to 1");
        anyhow::ensure!((1..=3600).contains(&self.stage_seconds), "--stage-seconds must be from 1 to 3600");
        anyhow::ensure!((1..=1_000_000).contains(&self.participants), "--participants must be from 1 to 1000000");
        anyhow::ensure!((1..=2000).contains(&self.rate), "--rate must be from 1 to 2000 requests per second");
        anyhow::ensure!(self.min_sends >= 1, "--min-sends must be at least 1");
        Ok(())
    }
}

/// How a simulation ended.
#[derive(Clone, Debug)]
pub struct SimulationResult {
    /// The plan's final state (`completed` or `paused` when it ran to a verdict).
    pub state: State,
    /// 1-based stage the plan ended in, and its percentage.
    pub stage: usize,
    pub percentage: f64,
}

/// Runs the simulation and prints progress, the Markdown report and the decisions to stdout.
pub async fn simulate(config: &Config, options: SimulateOptions) -> anyhow::Result<SimulationResult> {
    options.validate()?;
    let name = format!("ebg_simulate_{}", Uuid::new_v4().simple());
    let database_url = sibling_database_url(config.database.url.expose(), &name)?;
    println!("simulation database: {name} (on the configured server; the configured database is not touched)");
    let outcome = run(&database_url, &options).await;
    if options.keep {
        println!("kept database {name}");
    } else if let Err(e) = drop_database(config, &name).await {
        eprintln!("could not drop the simulation database {name}: {e:#}");
    }
    outcome
}

/// The configured server's URL with another database name.
fn sibling_database_url(configured: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(configured).context("database.url is not a URL")?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

async fn drop_database(config: &Config, name: &str) -> anyhow::Result<()> {
    let options = crate::db::connect_options(&config.database)?.database("postgres");
    let mut conn = options.connect().await?;
    // The name is ours (`ebg_simulate_` + hex), so quoting it is enough. An identifier cannot be a
    // parameter, so this statement stays dynamic (not checked at build time).
    sqlx::query(&format!("drop database if exists \"{name}\" with (force)")).execute(&mut conn).await?;
    let _ = conn.close().await;
    Ok(())
}

/// The service's configuration for the run: the local profile's defaults (sandbox contacts, development
/// token keys) with the simulation's database, the simulated VA Notify and click tracking.
fn simulation_config(database_url: &str, fake: &FakeVaNotify, admin_token: &str) -> anyhow::Result<Config> {
    let mut config = Config::load_from(vec![("EBG_PROFILE".to_owned(), "local".to_owned())])?;
    config.http.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.database.url = Secret::new(database_url);
    config.database.create_if_missing = true;
    config.database.migrate_on_start = true;
    config.notify.mode = NotifyMode::Live;
    config.notify.base_url = fake.base_url();
    config.notify.api_key = Secret::new(fake.api_key());
    config.notify.rate_per_minute = 1_000_000;
    config.notify.callback_token = Secret::new(Uuid::new_v4().simple().to_string());
    config.contacts.mode = ContactsMode::Sandbox;
    // The simulated VA Notify reads the token out of the `host` personalisation and clicks through the
    // service itself, so the tracker's public host only has to be well formed.
    config.clicks.enabled = true;
    config.clicks.base_url = "http://localhost".to_owned();
    config.admin.token = Secret::new(admin_token);
    config.admin.tokens.clear();
    config.worker.enabled = true;
    config.worker.poll_interval_ms = 100;
    // Every synthetic participant is asked for the same template over and over: that is traffic here,
    // not the duplicate EBG's window exists for.
    config.accept.duplicate_window_seconds = 0;
    config.rollout.enabled = true;
    config.rollout.interval_seconds = 1;
    config.validate()?;
    Ok(config)
}

async fn run(database_url: &str, options: &SimulateOptions) -> anyhow::Result<SimulationResult> {
    let fake = SimulatedVaNotify::start(options.failure_rate, options.click_rate).await?;
    let admin_token = Uuid::new_v4().simple().to_string();
    let config = simulation_config(database_url, &fake.fake, &admin_token)?;
    let callback_token = config.notify.callback_token.expose().to_owned();
    let auth = config.auth.clone();
    let app = Application::build(config).await.context("the simulated service did not start")?;
    let service = format!("http://127.0.0.1:{}", app.port());
    let pool = app.state().db.clone();
    fake.connect(&service, &callback_token);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;

    let stages: Vec<Value> = STAGES
        .iter()
        .map(|p| json!({"percentage": p, "min_dwell_seconds": options.stage_seconds, "min_sends": options.min_sends}))
        .collect();
    let plan = json!({"feature": EMAILS_ENABLED, "mode": "auto", "stages": stages, "max_error_rate": 0.05});
    let created = http
        .post(format!("{service}/admin/rollouts"))
        .bearer_auth(&admin_token)
        .header("x-reason", "ebg-notify simulate")
        .json(&plan)
        .send()
        .await?;
    anyhow::ensure!(created.status() == StatusCode::CREATED, "creating the plan failed: HTTP {}", created.status());
    let plan: PlanDetail = created.json().await?;
    println!(
        "plan {}: auto, stages {} % with dwell {}s and at least {} attempted sends each; pause when the error rate reaches 5%",
        plan.plan.id,
        STAGES.map(format_percentage).join(" → "),
        options.stage_seconds,
        options.min_sends
    );
    println!(
        "traffic: {} requests/s from {} participants; VA Notify failure rate {:.1}%, click rate {:.1}%",
        options.rate,
        options.participants,
        options.failure_rate * 100.0,
        options.click_rate * 100.0
    );

    let traffic_stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let traffic =
        tokio::spawn(traffic(http.clone(), service.clone(), auth, options.clone(), sent.clone(), traffic_stop.clone()));

    let final_detail = watch(&http, &service, &admin_token, plan.plan.id, options, &sent).await;
    traffic_stop.cancel();
    let traffic_result = traffic.await;
    // Let callbacks and clicks of the last sends land before counting.
    tokio::time::sleep(CALLBACK_DELAY * 4).await;
    fake.stop().await;

    let outcome = match (final_detail, traffic_result) {
        (Ok(detail), Ok(Ok(()))) => conclude(&pool, &detail).await,
        (Err(e), _) => Err(e),
        (_, Ok(Err(e))) => Err(e),
        (_, Err(e)) => Err(anyhow::anyhow!("traffic generator failed: {e}")),
    };
    shutdown.cancel();
    let _ = server.await;
    outcome
}

/// Prints the report and the decisions, then the verdict.
async fn conclude(pool: &sqlx::PgPool, detail: &PlanDetail) -> anyhow::Result<SimulationResult> {
    let plan = &detail.plan;
    let started = detail.decisions.first().map(|d| d.at);
    // Judged with the plan's own minimum sample, so the report's verdicts are the ones the plan acted on.
    let min_sample = plan.stages.iter().map(|s| s.min_sends).min().unwrap_or(1);
    let request = ReportRequest {
        feature: plan.feature.clone(),
        from: started,
        to: None,
        max_error_rate: plan.max_error_rate,
        min_sample,
        click_tracking: true,
    };
    let built = report::build(pool, &request).await?;
    println!("\n{}", report::markdown(&built));
    println!("## Decisions\n");
    for d in &detail.decisions {
        println!(
            "- {} stage {} — **{}** ({}){} {}",
            d.at.to_rfc3339_opts(SecondsFormat::Secs, true),
            d.stage + 1,
            d.decision,
            d.reason,
            if d.applied { ", applied" } else { "" },
            rollout::evidence_line(&d.evidence)
        );
    }
    let stage = usize::try_from(plan.current_stage).unwrap_or(0) + 1;
    let percentage = plan.stage().map_or(0.0, |s| s.percentage);
    println!();
    match plan.state {
        State::Completed => println!("Result: COMPLETED — every stage passed; the feature is at 100%."),
        State::Paused => {
            let evidence = detail.decisions.iter().rev().find(|d| d.decision == "pause").map(|d| &d.evidence);
            println!(
                "Result: PAUSED at stage {stage} ({}%), the first stage with enough sample — {}. The feature is off \
                 for everyone (kill switch); its gates still say {}%, so resuming restores the stage.",
                format_percentage(percentage),
                evidence.map(rollout::evidence_line).unwrap_or_default(),
                format_percentage(percentage),
            );
        }
        other => println!("Result: {} at stage {stage} ({}%).", other.as_str(), format_percentage(percentage)),
    }
    Ok(SimulationResult { state: plan.state, stage, percentage })
}

/// Polls the plan, printing each new decision, with a progress bar (or heartbeat lines without a
/// terminal), until it reaches a verdict or the deadline passes.
async fn watch(
    http: &reqwest::Client,
    service: &str,
    admin_token: &str,
    id: Uuid,
    options: &SimulateOptions,
    sent: &AtomicU64,
) -> anyhow::Result<PlanDetail> {
    let started = Instant::now();
    // Generous: each stage needs its dwell plus enough traffic, and the run must still end by itself.
    let deadline = Duration::from_secs(STAGES.len() as u64 * options.stage_seconds * 4 + 120);
    let mut printed = 0;
    // A bar on a terminal; without one, a heartbeat line every few seconds on stderr.
    let mut progress = crate::progress::Progress::new("simulate", Some(STAGES.len() as u64));
    loop {
        let detail: PlanDetail = http
            .get(format!("{service}/admin/rollouts/{id}"))
            .bearer_auth(admin_token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let elapsed = started.elapsed().as_secs();
        for d in &detail.decisions[printed..] {
            let pct = usize::try_from(d.stage)
                .ok()
                .and_then(|i| detail.plan.stages.get(i))
                .map_or_else(String::new, |s| format!(" ({}%)", format_percentage(s.percentage)));
            progress.println(&format!(
                "[{elapsed:>4}s] stage {}/{}{pct}: {} ({}) {}",
                d.stage + 1,
                detail.plan.stages.len(),
                d.decision,
                d.reason,
                rollout::evidence_line(&d.evidence)
            ));
        }
        printed = detail.decisions.len();
        let finished =
            matches!(detail.plan.state, State::Completed | State::Paused | State::Interrupted | State::Aborted);
        let stages_done =
            u64::try_from(detail.plan.current_stage).unwrap_or(0) + u64::from(detail.plan.state == State::Completed);
        let line = detail.plan.last_evaluation.as_ref().map(rollout::evidence_line).unwrap_or_default();
        let status = format!(
            "stages passed; {} requests sent; plan {} in stage {}: {line}",
            sent.load(Ordering::Relaxed),
            detail.plan.state.as_str(),
            detail.plan.current_stage + 1
        );
        if finished {
            progress.finish(stages_done, status);
            return Ok(detail);
        }
        progress.update(stages_done, status);
        if started.elapsed() > deadline {
            progress.finish(stages_done, "deadline passed");
            anyhow::bail!(
                "the plan did not finish within {}s (state {}): raise --rate or lower --min-sends",
                deadline.as_secs(),
                detail.plan.state.as_str()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sends `rate` requests per second from random participants through `send_email` until `stop`.
async fn traffic(
    http: reqwest::Client,
    service: String,
    auth: crate::config::AuthConfig,
    options: SimulateOptions,
    sent: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let url = format!("{service}{}", crate::http::SEND_EMAIL_PATH);
    let body = json!({ "template_id": TEMPLATE_ID });
    let mut tokens: HashMap<u64, Arc<str>> = HashMap::new();
    let tracker = TaskTracker::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let participant = FIRST_PARTICIPANT + rand::thread_rng().gen_range(0..options.participants);
        let token = match tokens.get(&participant) {
            Some(token) => token.clone(),
            None => {
                // Minted once per participant (RS256 signing is the costly part); valid past any run.
                let minted =
                    crate::auth::mint_dev_token(&auth, &participant.to_string(), Duration::from_secs(6 * 3600))
                        .context("cannot mint development tokens (run from the repository root)")?;
                let token: Arc<str> = minted.into();
                tokens.insert(participant, token.clone());
                token
            }
        };
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit?,
        };
        let (http, url, body, sent) = (http.clone(), url.clone(), body.clone(), sent.clone());
        tracker.spawn(async move {
            let _permit = permit;
            if let Ok(response) = http.post(&url).bearer_auth(&*token).json(&body).send().await {
                if response.status().is_success() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Whether the `n`-th event (0-based) of a stream is one of a `rate` share, spread evenly: the `k`-th
/// hit falls where the running count `rate * n` crosses an integer.
fn nth_is_hit(n: u64, rate: f64) -> bool {
    ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
}

/// Where the simulated VA Notify reports to, known once the service is bound.
struct Target {
    service: String,
    callback_token: String,
}

/// What the simulation adds to the fake: which sends fail, and reporting back like VA does.
struct Reporter {
    failure_rate: f64,
    click_rate: f64,
    sends: AtomicU64,
    failures: AtomicU64,
    deliveries: AtomicU64,
    /// References accepted with a 201 that are to be reported as permanent failures.
    failing: Mutex<HashSet<String>>,
    target: OnceLock<Target>,
    http: reqwest::Client,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// The [`Behaviour`] handed to the fake: a handle on the shared [`Reporter`], so callbacks can be spawned.
struct ReporterHandle(Arc<Reporter>);

impl Behaviour for ReporterHandle {
    /// A send fails for an evenly spread share; failures alternate between the two ways VA Notify
    /// reports them: a 400 now, or a 201 followed by a `permanent-failure` callback.
    fn reply(&self, _endpoint: Endpoint, body: &Value) -> Reply {
        let shared = &self.0;
        let n = shared.sends.fetch_add(1, Ordering::Relaxed);
        if !nth_is_hit(n, shared.failure_rate) {
            return Reply::Created;
        }
        if shared.failures.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
            return Reply::BadRequest;
        }
        if let Some(reference) = body.get("reference").and_then(Value::as_str) {
            shared.failing.lock().unwrap_or_else(PoisonError::into_inner).insert(reference.to_owned());
        }
        Reply::Created
    }

    fn created(&self, _endpoint: Endpoint, id: Uuid, body: &Value) {
        let reference = body.get("reference").and_then(Value::as_str).unwrap_or_default().to_owned();
        let host = body.pointer("/personalisation/host").and_then(Value::as_str).unwrap_or_default().to_owned();
        let fails = self.0.failing.lock().unwrap_or_else(PoisonError::into_inner).remove(&reference);
        let shared = self.0.clone();
        self.0.tasks.spawn(async move { report_back(shared, id, reference, host, fails).await });
    }
}

/// testkit's fake VA Notify on loopback, reporting back through a [`Reporter`].
struct SimulatedVaNotify {
    fake: FakeVaNotify,
    shared: Arc<Reporter>,
}

impl SimulatedVaNotify {
    async fn start(failure_rate: f64, click_rate: f64) -> anyhow::Result<Self> {
        let fake =
            FakeVaNotify::bind(SocketAddr::from(([127, 0, 0, 1], 0)), Uuid::new_v4(), Uuid::new_v4().to_string())
                .await
                .context("cannot start the simulated VA Notify on loopback")?;
        // A run sends thousands of requests: count them, do not keep their bodies.
        fake.set_recording(false);
        let shared = Arc::new(Reporter {
            failure_rate,
            click_rate,
            sends: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            failing: Mutex::new(HashSet::new()),
            target: OnceLock::new(),
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        });
        fake.set_behaviour(Arc::new(ReporterHandle(shared.clone())));
        Ok(Self { fake, shared })
    }

    fn connect(&self, service: &str, callback_token: &str) {
        let _ =
            self.shared.target.set(Target { service: service.to_owned(), callback_token: callback_token.to_owned() });
    }

    /// Stops reporting back (waiting a little for callbacks under way), then the server.
    async fn stop(self) {
        self.shared.stop.cancel();
        self.shared.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.tasks.wait()).await;
        drop(self.fake);
    }
}

/// Posts the delivery status to the service's callback route (retrying its 503 for a row still being
/// recorded, as VA Notify does), then clicks through the tracked link for a share of deliveries.
async fn report_back(shared: Arc<Reporter>, id: Uuid, reference: String, host: String, fails: bool) {
    let Some(target) = shared.target.get() else { return };
    tokio::time::sleep(CALLBACK_DELAY).await;
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let (status, reason) = if fails { ("permanent-failure", Some("Failed to deliver")) } else { ("delivered", None) };
    let callback = json!({
        "id": id, "reference": reference, "to": null, "status": status, "status_reason": reason,
        "created_at": now, "completed_at": now, "sent_at": now, "notification_type": "email", "provider": "simulation",
    });
    for _ in 0..50 {
        let posted = shared
            .http
            .post(format!("{}/va_notify/callbacks", target.service))
            .bearer_auth(&target.callback_token)
            .json(&callback)
            .send()
            .await;
        match posted {
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {}
            _ => break,
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    if fails || !nth_is_hit(shared.deliveries.fetch_add(1, Ordering::Relaxed), shared.click_rate) {
        return;
    }
    // `host` is `<tracker host>/c/<token>`; the Veteran's browser follows `https://<host>/<path>`.
    if let Some(at) = host.find(crate::clicks::PATH_PREFIX) {
        let link = format!("{}{}/track-claims", target.service, &host[at..]);
        let _ = shared.http.get(link).header("user-agent", "Mozilla/5.0 (simulated Veteran)").send().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_are_spread_evenly() {
        let hits = |rate: f64, n: u64| (0..n).filter(|&i| nth_is_hit(i, rate)).count();
        assert_eq!(hits(0.2, 100), 20);
        assert_eq!(hits(0.01, 1000), 10);
        assert_eq!(hits(0.0, 1000), 0);
        assert_eq!(hits(1.0, 10), 10);
        // Every fifth, not the first: a run's first sends succeed.
        assert!(!nth_is_hit(0, 0.2) && nth_is_hit(4, 0.2));
    }

    #[test]
    fn the_simulation_database_sits_beside_the_configured_one() {
        let url = sibling_database_url("postgres://u:p@db.example:5432/ebg_notify?sslmode=require", "ebg_simulate_1")
            .unwrap();
        assert_eq!(url, "postgres://u:p@db.example:5432/ebg_simulate_1?sslmode=require");
    }

    #[test]
    fn options_are_checked() {
        assert!(SimulateOptions::default().validate().is_ok());
        assert!(SimulateOptions { failure_rate: 1.5, ..SimulateOptions::default() }.validate().is_err());
        assert!(SimulateOptions { rate: 0, ..SimulateOptions::default() }.validate().is_err());
    }
}
