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
//! `--channels email,sms,push` drives every listed channel at once: one `auto` plan per channel's gate
//! with the same stages, traffic through `send_notifications` naming a template for each listed channel,
//! MPI in sandbox mode (every participant has an ICN; the SMS and push gates are keyed by it), and one
//! report per channel at the end. SMS is reported back like email (callbacks, tracked link); a push gets
//! no callback, so its failures are all VA Notify 400s. The default (`email`) is the single-channel run.
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
use crate::config::{Config, ContactsMode, MpiMode, NotifyMode, QuietHoursMode, Secret};
use crate::notify::Channel;
use crate::report::{self, ReportRequest};
use crate::rollout::{self, PlanDetail, State};
use crate::toggles::{EMAILS_ENABLED, format_percentage};

/// The seed's stages, in percent of participants.
const STAGES: [f64; 5] = [2.0, 25.0, 50.0, 75.0, 100.0];
/// The template every synthetic request names.
const TEMPLATE_ID: &str = "5a3b8e02-51b0-4d5a-8d0e-2c0e9f3c1a11";
/// The SMS template of multi-channel runs.
const SMS_TEMPLATE_ID: &str = "7c1d2e03-62c1-4e6b-9e1f-3d1f0a4d2b22";
/// The push template of multi-channel runs (VEText ids are strings, not UUIDs).
const PUSH_TEMPLATE_ID: &str = "simulate_letter_ready_push";
/// Every channel `--channels` accepts, in the order runs print them.
const ALL_CHANNELS: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Push];
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
    /// The channels driven, each by its own plan on its gate (default: email only).
    pub channels: Vec<Channel>,
}

/// Parses `--channels`: a comma-separated list of email, sms, push (each at most once, at least one).
pub fn parse_channels(text: &str) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim) {
        let Some(channel) = ALL_CHANNELS.into_iter().find(|c| c.as_str() == name) else {
            anyhow::bail!("--channels: unknown channel `{name}` (expected a comma-separated list of email, sms, push)");
        };
        anyhow::ensure!(!out.contains(&channel), "--channels: `{name}` is listed twice");
        out.push(channel);
    }
    // Printed in a fixed order whatever the order typed.
    out.sort_by_key(|c| ALL_CHANNELS.iter().position(|a| a == c));
    Ok(out)
}

/// The gate of a channel (its feature in `toggles::REGISTRATIONS`).
fn feature_of(channel: Channel) -> &'static str {
    crate::toggles::feature_for_channel(channel.as_str()).map_or(EMAILS_ENABLED, |r| r.key)
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
            channels: vec![Channel::Email],
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
        anyhow::ensure!(!self.channels.is_empty(), "--channels must name at least one of email, sms, push");
        Ok(())
    }
}

/// How one channel's plan ended.
#[derive(Clone, Debug)]
pub struct ChannelResult {
    pub channel: Channel,
    /// The plan's final state (`completed` or `paused` when it ran to a verdict).
    pub state: State,
    /// 1-based stage the plan ended in, and its percentage.
    pub stage: usize,
    pub percentage: f64,
}

/// How a simulation ended.
#[derive(Clone, Debug)]
pub struct SimulationResult {
    /// `completed` if every plan completed, else `paused` if one paused, else the first other end.
    pub state: State,
    /// Each channel's plan, in `--channels` order.
    pub channels: Vec<ChannelResult>,
}

impl SimulationResult {
    fn of(channels: Vec<ChannelResult>) -> Self {
        let states: Vec<State> = channels.iter().map(|c| c.state).collect();
        let state = if states.iter().all(|s| *s == State::Completed) {
            State::Completed
        } else if states.contains(&State::Paused) {
            State::Paused
        } else {
            states.into_iter().find(|s| *s != State::Completed).unwrap_or(State::Completed)
        };
        Self { state, channels }
    }
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
    config.notify.push_api_key = Secret::new(fake.push_api_key());
    config.notify.push_rate_per_minute = 1_000_000;
    config.contacts.mode = ContactsMode::Sandbox;
    // SMS and push need the ICN: sandbox MPI finds everyone (no mutual-TLS files needed).
    config.mpi.mode = MpiMode::Sandbox;
    // Synthetic traffic runs at any hour: quiet hours would defer the SMS of a run at night.
    config.sms.quiet_hours_mode = QuietHoursMode::Off;
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

    let mut plans = Vec::new();
    for channel in &options.channels {
        let plan = create_plan(&http, &service, &admin_token, *channel, options).await?;
        let on = if options.channels.len() > 1 {
            format!(" ({}, {})", channel.as_str(), plan.feature)
        } else {
            String::new()
        };
        println!(
            "plan {}{on}: auto, stages {} % with dwell {}s and at least {} attempted sends each; pause when the error rate reaches 5%",
            plan.id,
            STAGES.map(format_percentage).join(" → "),
            options.stage_seconds,
            options.min_sends
        );
        plans.push((*channel, plan.id));
    }
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

    let final_detail = watch(&http, &service, &admin_token, &plans, options, &sent).await;
    traffic_stop.cancel();
    let traffic_result = traffic.await;
    // Let callbacks and clicks of the last sends land before counting.
    tokio::time::sleep(CALLBACK_DELAY * 4).await;
    fake.stop().await;

    let outcome = match (final_detail, traffic_result) {
        (Ok(details), Ok(Ok(()))) => conclude_all(&pool, &details).await,
        (Err(e), _) => Err(e),
        (_, Ok(Err(e))) => Err(e),
        (_, Err(e)) => Err(anyhow::anyhow!("traffic generator failed: {e}")),
    };
    shutdown.cancel();
    let _ = server.await;
    outcome
}

/// Creates the `auto` plan of `channel`'s gate with the run's stages.
async fn create_plan(
    http: &reqwest::Client,
    service: &str,
    admin_token: &str,
    channel: Channel,
    options: &SimulateOptions,
) -> anyhow::Result<rollout::Plan> {
    let stages: Vec<Value> = STAGES
        .iter()
        .map(|p| json!({"percentage": p, "min_dwell_seconds": options.stage_seconds, "min_sends": options.min_sends}))
        .collect();
    let plan = json!({"feature": feature_of(channel), "mode": "auto", "stages": stages, "max_error_rate": 0.05});
    let created = http
        .post(format!("{service}/admin/rollouts"))
        .bearer_auth(admin_token)
        .header("x-reason", "ebg-notify simulate")
        .json(&plan)
        .send()
        .await?;
    anyhow::ensure!(
        created.status() == StatusCode::CREATED,
        "creating the {} plan failed: HTTP {}",
        channel.as_str(),
        created.status()
    );
    let detail: PlanDetail = created.json().await?;
    Ok(detail.plan)
}

/// Prints each channel's report, decisions and verdict, in `--channels` order.
async fn conclude_all(pool: &sqlx::PgPool, details: &[(Channel, PlanDetail)]) -> anyhow::Result<SimulationResult> {
    let named = details.len() > 1;
    let mut results = Vec::new();
    for (channel, detail) in details {
        results.push(conclude(pool, *channel, detail, named).await?);
    }
    Ok(SimulationResult::of(results))
}

/// Prints the report and the decisions, then the verdict; `named` adds the channel to the headings (a
/// multi-channel run prints one block per channel).
async fn conclude(
    pool: &sqlx::PgPool,
    channel: Channel,
    detail: &PlanDetail,
    named: bool,
) -> anyhow::Result<ChannelResult> {
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
    let of = if named { format!(" ({})", channel.as_str()) } else { String::new() };
    println!("## Decisions{of}\n");
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
        State::Completed => println!("Result{of}: COMPLETED — every stage passed; the feature is at 100%."),
        State::Paused => {
            let evidence = detail.decisions.iter().rev().find(|d| d.decision == "pause").map(|d| &d.evidence);
            println!(
                "Result{of}: PAUSED at stage {stage} ({}%), the first stage with enough sample — {}. The feature is \
                 off for everyone (kill switch); its gates still say {}%, so resuming restores the stage.",
                format_percentage(percentage),
                evidence.map(rollout::evidence_line).unwrap_or_default(),
                format_percentage(percentage),
            );
        }
        other => println!("Result{of}: {} at stage {stage} ({}%).", other.as_str(), format_percentage(percentage)),
    }
    Ok(ChannelResult { channel, state: plan.state, stage, percentage })
}

/// Polls the plans, printing each new decision, with a progress bar (or heartbeat lines without a
/// terminal), until every plan reaches a verdict or the deadline passes.
async fn watch(
    http: &reqwest::Client,
    service: &str,
    admin_token: &str,
    plans: &[(Channel, Uuid)],
    options: &SimulateOptions,
    sent: &AtomicU64,
) -> anyhow::Result<Vec<(Channel, PlanDetail)>> {
    let started = Instant::now();
    // Generous: each stage needs its dwell plus enough traffic, and the run must still end by itself.
    // The plans run side by side, so more channels do not take longer.
    let deadline = Duration::from_secs(STAGES.len() as u64 * options.stage_seconds * 4 + 120);
    let named = plans.len() > 1;
    let mut printed = vec![0; plans.len()];
    // A bar on a terminal; without one, a heartbeat line every few seconds on stderr.
    let total = (STAGES.len() * plans.len()) as u64;
    let mut progress = crate::progress::Progress::new("simulate", Some(total));
    loop {
        let mut details = Vec::with_capacity(plans.len());
        for (channel, id) in plans {
            let detail: PlanDetail = http
                .get(format!("{service}/admin/rollouts/{id}"))
                .bearer_auth(admin_token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            details.push((*channel, detail));
        }
        let elapsed = started.elapsed().as_secs();
        let mut stages_done = 0;
        let mut statuses = Vec::new();
        for ((channel, detail), printed) in details.iter().zip(printed.iter_mut()) {
            let who = if named { format!("{} ", channel.as_str()) } else { String::new() };
            for d in &detail.decisions[*printed..] {
                let pct = usize::try_from(d.stage)
                    .ok()
                    .and_then(|i| detail.plan.stages.get(i))
                    .map_or_else(String::new, |s| format!(" ({}%)", format_percentage(s.percentage)));
                progress.println(&format!(
                    "[{elapsed:>4}s] {who}stage {}/{}{pct}: {} ({}) {}",
                    d.stage + 1,
                    detail.plan.stages.len(),
                    d.decision,
                    d.reason,
                    rollout::evidence_line(&d.evidence)
                ));
            }
            *printed = detail.decisions.len();
            stages_done += u64::try_from(detail.plan.current_stage).unwrap_or(0)
                + u64::from(detail.plan.state == State::Completed);
            let line = detail.plan.last_evaluation.as_ref().map(rollout::evidence_line).unwrap_or_default();
            statuses.push(format!(
                "{who}plan {} in stage {}: {line}",
                detail.plan.state.as_str(),
                detail.plan.current_stage + 1
            ));
        }
        let finished = details.iter().all(|(_, d)| {
            matches!(d.plan.state, State::Completed | State::Paused | State::Interrupted | State::Aborted)
        });
        let status = format!("stages passed; {} requests sent; {}", sent.load(Ordering::Relaxed), statuses.join("; "));
        if finished {
            progress.finish(stages_done, status);
            return Ok(details);
        }
        progress.update(stages_done, status);
        if started.elapsed() > deadline {
            progress.finish(stages_done, "deadline passed");
            let states: Vec<String> =
                details.iter().map(|(c, d)| format!("{} {}", c.as_str(), d.plan.state.as_str())).collect();
            anyhow::bail!(
                "the plan did not finish within {}s (state {}): raise --rate or lower --min-sends",
                deadline.as_secs(),
                if named { states.join(", ") } else { details[0].1.plan.state.as_str().to_owned() }
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where the traffic goes and what it asks for: `send_email` for an email-only run (as EBG does while only
/// email is on), else `send_notifications` with a template for each listed channel.
fn request_for(service: &str, channels: &[Channel]) -> (String, Value) {
    if channels == [Channel::Email] {
        return (format!("{service}{}", crate::http::SEND_EMAIL_PATH), json!({ "template_id": TEMPLATE_ID }));
    }
    let mut body = serde_json::Map::new();
    for channel in channels {
        let (field, template) = match channel {
            Channel::Email => ("email_template_id", TEMPLATE_ID),
            Channel::Sms => ("sms_template_id", SMS_TEMPLATE_ID),
            Channel::Push => ("push_template_id", PUSH_TEMPLATE_ID),
        };
        body.insert(field.to_owned(), Value::String(template.to_owned()));
    }
    (format!("{service}{}", crate::http::SEND_NOTIFICATIONS_PATH), Value::Object(body))
}

/// Sends `rate` requests per second from random participants (see [`request_for`]) until `stop`.
async fn traffic(
    http: reqwest::Client,
    service: String,
    auth: crate::config::AuthConfig,
    options: SimulateOptions,
    sent: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (url, body) = request_for(&service, &options.channels);
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
    /// Per endpoint ([`slot`]), so each channel gets its own evenly spread share.
    sends: [AtomicU64; 3],
    failures: [AtomicU64; 3],
    deliveries: [AtomicU64; 3],
    /// References accepted with a 201 that are to be reported as permanent failures.
    failing: Mutex<HashSet<String>>,
    target: OnceLock<Target>,
    http: reqwest::Client,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// The index of an endpoint's counters.
fn slot(endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::Email => 0,
        Endpoint::Sms => 1,
        Endpoint::Push => 2,
    }
}

/// The [`Behaviour`] handed to the fake: a handle on the shared [`Reporter`], so callbacks can be spawned.
struct ReporterHandle(Arc<Reporter>);

impl Behaviour for ReporterHandle {
    /// A send fails for an evenly spread share of each channel; failures of email and SMS alternate
    /// between the two ways VA Notify reports them: a 400 now, or a 201 followed by a `permanent-failure`
    /// callback. A push gets no callback, so every failing push is a 400.
    fn reply(&self, endpoint: Endpoint, body: &Value) -> Reply {
        let shared = &self.0;
        let n = shared.sends[slot(endpoint)].fetch_add(1, Ordering::Relaxed);
        if !nth_is_hit(n, shared.failure_rate) {
            return Reply::Created;
        }
        if endpoint == Endpoint::Push || shared.failures[slot(endpoint)].fetch_add(1, Ordering::Relaxed) % 2 == 0 {
            return Reply::BadRequest;
        }
        if let Some(reference) = body.get("reference").and_then(Value::as_str) {
            shared.failing.lock().unwrap_or_else(PoisonError::into_inner).insert(reference.to_owned());
        }
        Reply::Created
    }

    /// Called for email and SMS only (the fake creates no notification for a push).
    fn created(&self, endpoint: Endpoint, id: Uuid, body: &Value) {
        let reference = body.get("reference").and_then(Value::as_str).unwrap_or_default().to_owned();
        let host = body.pointer("/personalisation/host").and_then(Value::as_str).unwrap_or_default().to_owned();
        let fails = self.0.failing.lock().unwrap_or_else(PoisonError::into_inner).remove(&reference);
        let shared = self.0.clone();
        let sent = Sent { endpoint, id, reference, host, fails };
        self.0.tasks.spawn(async move { report_back(shared, sent).await });
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
            sends: Default::default(),
            failures: Default::default(),
            deliveries: Default::default(),
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

/// A notification VA created, to be reported back.
struct Sent {
    endpoint: Endpoint,
    id: Uuid,
    reference: String,
    /// The `host` personalisation (the tracked link's host when tracking is on; email and SMS carry it).
    host: String,
    fails: bool,
}

/// Posts the delivery status to the service's callback route (retrying its 503 for a row still being
/// recorded, as VA Notify does), then clicks through the tracked link for a share of deliveries.
async fn report_back(shared: Arc<Reporter>, sent: Sent) {
    let Sent { endpoint, id, reference, host, fails } = sent;
    let (kind, provider) = if endpoint == Endpoint::Sms { ("sms", "pinpoint") } else { ("email", "simulation") };
    let Some(target) = shared.target.get() else { return };
    tokio::time::sleep(CALLBACK_DELAY).await;
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let (status, reason) = if fails { ("permanent-failure", Some("Failed to deliver")) } else { ("delivered", None) };
    let callback = json!({
        "id": id, "reference": reference, "to": null, "status": status, "status_reason": reason,
        "created_at": now, "completed_at": now, "sent_at": now, "notification_type": kind, "provider": provider,
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
    if fails || !nth_is_hit(shared.deliveries[slot(endpoint)].fetch_add(1, Ordering::Relaxed), shared.click_rate) {
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
    fn channels_are_parsed_and_checked() {
        assert_eq!(parse_channels("email").unwrap(), [Channel::Email]);
        assert_eq!(parse_channels("push, email,sms").unwrap(), ALL_CHANNELS, "printed in a fixed order");
        for bad in ["fax", "email,email", "", "email,"] {
            let e = parse_channels(bad).unwrap_err().to_string();
            assert!(e.starts_with("--channels"), "{bad}: {e}");
        }
        assert_eq!(ALL_CHANNELS.map(feature_of), report::GATES);
        let (url, body) = request_for("http://s", &[Channel::Sms, Channel::Push]);
        assert!(url.ends_with(crate::http::SEND_NOTIFICATIONS_PATH));
        assert_eq!(body, json!({"sms_template_id": SMS_TEMPLATE_ID, "push_template_id": PUSH_TEMPLATE_ID}));
        assert!(request_for("http://s", &[Channel::Email]).0.ends_with(crate::http::SEND_EMAIL_PATH));
    }

    #[test]
    fn options_are_checked() {
        assert!(SimulateOptions::default().validate().is_ok());
        assert!(SimulateOptions { failure_rate: 1.5, ..SimulateOptions::default() }.validate().is_err());
        assert!(SimulateOptions { rate: 0, ..SimulateOptions::default() }.validate().is_err());
    }
}
