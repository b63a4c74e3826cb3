//! Delivery workers: claim due rows, resolve the contact, call VA Notify, record the outcome.
//!
//! One claim loop per replica feeds up to `worker.concurrency` deliveries at a time. Tests drive
//! [`Deliverer::run_once`] to process whatever is due without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Days, Utc};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::channel_policy::{ChannelPolicy, REASON_DRY_RUN};
use super::clock::Clock;
use super::owner::Owner;
use super::quiet_hours::{QuietDecision, QuietHours, REASON_QUIET_HOURS};
use super::{
    CHANNEL_EMAIL, CHANNEL_PUSH, CHANNEL_SMS, CHANNELS, CallRecord, Claimed, FinishQueue, PriorCall, Status,
    Transition, Wakeup, backoff,
};
use crate::clicks::ClickLinks;
use crate::config::{NotifyConfig, WorkerConfig};
use crate::contacts::{ContactError, Contacts, Identity, Mpi, MpiError};
use crate::metrics as m;
use crate::notify::templates::{TemplateSwap, UNIVERSAL_LINK_FEATURE};
use crate::notify::{
    Admits, BreakerState, Channel, EmailRequest, ErrorClass, Lane, NotifyClient, NotifyError, PushRequest, SmsRequest,
    web_host,
};
use crate::telemetry::PiiHasher;
use crate::toggles::Toggles;

/// Everything a delivery needs; cheap to clone into each delivery task.
#[derive(Clone)]
pub struct Deliverer {
    pool: PgPool,
    contacts: Contacts,
    /// ICNs for SMS and push (and their ICN-keyed toggles).
    mpi: Mpi,
    /// The SMS and push toggles are decided here, once the ICN is known.
    toggles: Toggles,
    notify: NotifyClient,
    pii: PiiHasher,
    config: WorkerConfig,
    /// The `host` personalisation VA.gov links are built from.
    host: Arc<str>,
    /// When click tracking is on, the `host` becomes the tracker's, per notification.
    clicks: Option<ClickLinks>,
    breaker_open_for: Duration,
    /// How long after an unanswered call VA Notify may still be creating its notification: the
    /// lookup that reconciles it waits this long (the client's own timeout).
    reconcile_after: Duration,
    /// Outcomes are written with group commit.
    finish: FinishQueue,
    /// This process's owner lock, recorded on its leases.
    owner: Owner,
    /// Quiet hours, dry runs and the universal-link swap (CHANNELS.md §5, §6).
    policies: Policies,
    /// The wall clock quiet hours are decided by (the system clock; tests may pin it).
    clock: Clock,
}

/// The channel policies the worker asks before each call (CHANNELS.md §5–§7).
#[derive(Clone, Debug)]
pub struct Policies {
    /// Asked before every SMS call: first send, retry and resend.
    pub quiet_hours: QuietHours,
    /// Dry runs per channel (and resend policies, which the callback path reads).
    pub channels: ChannelPolicy,
    /// Email templates swapped for their universal-link versions while the feature is on.
    pub templates: TemplateSwap,
}

impl Policies {
    /// The policies of a validated configuration; `Err` lists what is wrong (keys named), as validation does.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, String> {
        let quiet_hours = QuietHours::from_config(&config.sms).map_err(|problems| problems.join("; "))?;
        let (templates, _notes) =
            TemplateSwap::load(&config.templates.file).map_err(|e| format!("templates.file: {e}"))?;
        Ok(Self {
            quiet_hours,
            channels: ChannelPolicy::new(&config.callbacks, &config.sms, &config.dry_run),
            templates,
        })
    }
}

impl Deliverer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: PgPool,
        contacts: Contacts,
        mpi: Mpi,
        toggles: Toggles,
        notify: NotifyClient,
        pii: PiiHasher,
        config: &WorkerConfig,
        notify_config: &NotifyConfig,
        policies: Policies,
    ) -> Self {
        Self {
            finish: FinishQueue::start(pool.clone()),
            pool,
            contacts,
            mpi,
            toggles,
            notify,
            pii,
            config: config.clone(),
            host: web_host(&notify_config.hostname).into(),
            clicks: None,
            breaker_open_for: notify_config.breaker_open(),
            reconcile_after: notify_config.timeout(),
            owner: Owner::default(),
            policies,
            clock: Clock::default(),
        }
    }

    /// The wall clock quiet hours are decided by, shared with every clone (tests pin it).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Sends links through the click tracker (SPEC §8): `host` becomes `<tracker host>/c/<token>`.
    pub fn with_click_tracking(mut self, links: ClickLinks) -> Self {
        self.clicks = Some(links);
        self
    }

    /// The `host` personalisation for one notification.
    fn host_for(&self, row: &Claimed) -> String {
        match &self.clicks {
            Some(links) => links.host_for(row.id),
            None => self.host.to_string(),
        }
    }

    /// Claims what is due now (up to the concurrency), of every channel whatever the breakers say, and
    /// delivers it; returns how many rows it took.
    pub async fn run_once(&self) -> Result<usize, sqlx::Error> {
        let rows = self.claim(self.config.concurrency, &CHANNELS).await?;
        let count = rows.len();
        futures::future::join_all(rows.into_iter().map(|row| self.deliver(row))).await;
        Ok(count)
    }

    /// Runs the claim loop until `cancel` fires, then waits for deliveries in flight.
    ///
    /// Each VA Notify lane (email and SMS; push) is claimed for as its breaker admits: a closed lane's
    /// channels up to the free slots, a half-open lane's one trial row, an open lane's (or one whose trial
    /// is outstanding) nothing, so its rows wait untouched instead of being claimed and pushed back (two
    /// writes each) while the other lane's keep flowing.
    pub async fn run(self, wake: Wakeup, running: Arc<AtomicBool>, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let tasks = TaskTracker::new();
        let trials = Arc::new(Trials::default());
        let poll = self.config.poll_interval();
        let peers = tokio::spawn(wake.clone().listen_for_peers(cancel.clone()));
        let owner_lock = self.owner.hold((*self.pool.connect_options()).clone(), cancel.clone()).await;
        // True while the last claim filled every free slot, i.e. more rows are probably due.
        let mut backlog = false;
        running.store(true, Ordering::SeqCst);
        while !cancel.is_cancelled() {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            };
            if backlog {
                // Under a backlog, slots free up one by one; a moment's wait lets one claim (one
                // transaction) serve several of them instead of one claim per finished delivery.
                tokio::time::sleep(CLAIM_GATHER).await;
            }
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            self.record_breaker_states(); // keeps the gauges current between scrapes
            let free = permits.len();
            let plan =
                ClaimPlan::new(|lane| if trials.outstanding(lane) { Admits::None } else { self.notify.admits(lane) });
            let mut started = self.start_trials(&plan.trials, &mut permits, &trials, &tasks).await;
            started += self.start_open(&plan.open, &mut permits, &tasks).await;
            backlog = started == free;
            if started > 0 {
                continue;
            }
            drop(permits);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wake.notified() => {}
                _ = trials.settled.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        running.store(false, Ordering::SeqCst);
        let _ = peers.await;
        tasks.close();
        tasks.wait().await;
        // Released only after the deliveries finished, so nobody takes their rows meanwhile.
        let _ = owner_lock.await;
    }

    /// Claims one trial row for each half-open lane in `lanes`, each on one of `permits`, and delivers it in
    /// `tasks`; returns how many it started. Nothing more of a lane is claimed until its trial has settled the
    /// breaker (`trials`).
    async fn start_trials(
        &self,
        lanes: &[Lane],
        permits: &mut Vec<OwnedSemaphorePermit>,
        trials: &Arc<Trials>,
        tasks: &TaskTracker,
    ) -> usize {
        let mut started = 0;
        for &lane in lanes {
            let Some(permit) = permits.pop() else { break };
            let row = match self.claim(1, &channel_names(lane)).await {
                Ok(mut rows) => rows.pop(),
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a trial notification failed");
                    None
                }
            };
            let Some(row) = row else { continue };
            trials.begin(lane);
            let (this, trials) = (self.clone(), trials.clone());
            tasks.spawn(async move {
                this.deliver(row).await;
                trials.end(lane);
                drop(permit);
            });
            started += 1;
        }
        started
    }

    /// Claims due rows of `channels` (the closed lanes'), one per remaining permit, and delivers them in
    /// `tasks`; returns how many it started.
    async fn start_open(
        &self,
        channels: &[&'static str],
        permits: &mut Vec<OwnedSemaphorePermit>,
        tasks: &TaskTracker,
    ) -> usize {
        if channels.is_empty() || permits.is_empty() {
            return 0;
        }
        let rows = match self.claim(permits.len(), channels).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "claiming due notifications failed");
                return 0;
            }
        };
        let started = rows.len();
        for (row, permit) in rows.into_iter().zip(permits.drain(..)) {
            let this = self.clone();
            tasks.spawn(async move {
                this.deliver(row).await;
                drop(permit);
            });
        }
        started
    }

    /// Leases up to `limit` due rows of `channels` for this process.
    async fn claim(&self, limit: usize, channels: &[&str]) -> Result<Vec<Claimed>, sqlx::Error> {
        super::claim(&self.pool, limit as i64, self.lease(), self.owner.current(), channels).await
    }

    /// The VA Notify email/SMS breaker's state (and the `ebg_va_notify_circuit_state{lane="notify"}` gauge, set as
    /// it is read).
    pub fn breaker_state(&self) -> BreakerState {
        self.notify.breaker_state()
    }

    /// Sets both breakers' state gauges (`lane="notify"` and `lane="push"`), for a scrape.
    pub fn record_breaker_states(&self) {
        self.notify.breaker_state();
        self.notify.push_breaker_state();
    }

    /// Sets the contact and MPI caches' size gauges.
    pub async fn record_cache_size(&self) {
        self.contacts.record_cache_size().await;
        self.mpi.record_cache_size().await;
    }

    fn lease(&self) -> Duration {
        self.config.lease()
    }

    /// Delivers one leased row and records the outcome. Errors are logged, never propagated:
    /// an unrecorded outcome leaves the lease to expire, and the row is tried again.
    #[tracing::instrument(skip_all, fields(notification_id = %row.id, participant = %self.pii.participant(&row.participant_id)))]
    pub async fn deliver(&self, row: Claimed) {
        if let Err(e) = self.try_deliver(&row).await {
            tracing::warn!(error = %e, "recording a delivery outcome failed; the lease will expire and the row be retried");
        }
    }

    async fn try_deliver(&self, row: &Claimed) -> Result<(), sqlx::Error> {
        let prior = match (row.in_doubt_since, row.channel.as_str()) {
            (None, _) => None,
            // A push has no reference to look it up by: sent again (push is at least once, SPEC §14).
            (Some(_), CHANNEL_PUSH) => Some(PriorCall::Unverifiable),
            (Some(since), _) => match self.reconcile(row, since).await? {
                Some(prior) => Some(prior),
                None => return Ok(()),
            },
        };
        match row.channel.as_str() {
            CHANNEL_EMAIL => self.deliver_email(row, prior).await,
            CHANNEL_SMS => self.deliver_sms(row, prior).await,
            CHANNEL_PUSH => self.deliver_push(row, prior).await,
            _ => {
                let failed = Transition::Finish { status: Status::Failed, reason: "unknown_channel".into() };
                self.conclude(row, None, failed, prior).await
            }
        }
    }

    /// Email: the first name from BGS, then VA Notify by participant id.
    async fn deliver_email(&self, row: &Claimed, prior: Option<PriorCall>) -> Result<(), sqlx::Error> {
        let Some(template_id) = self.template_uuid(row) else { return self.bad_template(row, prior).await };
        let contact = match self.contacts.lookup(&row.participant_id).await {
            Ok(contact) => contact,
            Err(e) => return self.contact_failed(row, &e, prior).await,
        };
        if self.policies.channels.dry_run(Channel::Email) {
            return self.dry_run(row, prior).await;
        }
        let template_id = self.template_to_send(row, template_id).await?;
        let host = self.host_for(row);
        let email = EmailRequest {
            template_id,
            participant_id: &row.participant_id,
            first_name: &contact.first_name,
            host: &host,
            reference: row.id,
        };
        let result = self.notify.send_email(&email).await.map(|sent| sent.id);
        self.after_send(row, result, prior).await
    }

    /// SMS: the ICN from MPI (for the ICN-keyed toggle; deceased Veterans are skipped), then VA
    /// Notify by participant id (VA Profile holds the number).
    async fn deliver_sms(&self, row: &Claimed, prior: Option<PriorCall>) -> Result<(), sqlx::Error> {
        let Some(template_id) = self.template_uuid(row) else { return self.bad_template(row, prior).await };
        if self.identity_for(row, prior).await?.is_none() {
            return Ok(());
        }
        match self.policies.quiet_hours.decide(self.clock.now(), row.id) {
            QuietDecision::Send => {}
            QuietDecision::DeferUntil(at) => {
                // Not a try: the row goes back to its pending state, due when the window ends (plus its slot).
                let defer = Transition::Defer { at, reason: REASON_QUIET_HOURS.into() };
                return self.conclude(row, None, defer, prior).await;
            }
            QuietDecision::Block => {
                let blocked = Transition::Finish { status: Status::Suppressed, reason: REASON_QUIET_HOURS.into() };
                return self.conclude(row, None, blocked, prior).await;
            }
        }
        if self.policies.channels.dry_run(Channel::Sms) {
            return self.dry_run(row, prior).await;
        }
        let host = self.host_for(row);
        let sms = SmsRequest { template_id, participant_id: &row.participant_id, host: &host, reference: row.id };
        let result = self.notify.send_sms(&sms).await.map(|sent| sent.id);
        self.after_send(row, result, prior).await
    }

    /// Push: the ICN from MPI, the ICN-keyed toggle, then VA Notify by ICN. An accepted push has no id
    /// and gets no callback: it ends `sent`.
    async fn deliver_push(&self, row: &Claimed, prior: Option<PriorCall>) -> Result<(), sqlx::Error> {
        let Some(identity) = self.identity_for(row, prior).await? else { return Ok(()) };
        if self.policies.channels.dry_run(Channel::Push) {
            return self.dry_run(row, prior).await;
        }
        let push = PushRequest { template_id: &row.template_id, icn: &identity.icn };
        let (call, transition) = match self.notify.send_push(&push).await {
            Ok(_accepted) => (
                CallRecord { outcome: "sent", http_status: Some(201), error_class: None, va_notify_id: None },
                Transition::Pushed,
            ),
            Err(e) => self.failed_call(row, &e),
        };
        let call = (!matches!(transition, Transition::Defer { .. })).then_some(call);
        self.conclude(row, call, transition, prior).await
    }

    /// Resolves the ICN and decides the channel's ICN-keyed toggle. `None` when the try is over
    /// (skipped, failed, retry, or `suppressed`/`toggle_disabled`), already recorded.
    /// A feature off for everyone is decided before the look-up: MPI is not asked about a Veteran the channel
    /// cannot reach anyway (and pausing SMS and push during an MPI outage stops their failing look-ups).
    async fn identity_for(&self, row: &Claimed, prior: Option<PriorCall>) -> Result<Option<Identity>, sqlx::Error> {
        let feature = crate::toggles::feature_for_channel(&row.channel).map(|r| r.key);
        if feature.is_some_and(|feature| self.toggles.is_off_for_everyone(feature)) {
            return self.suppress_for_toggle(row, prior).await.map(|()| None);
        }
        let identity = match self.mpi.lookup(&row.participant_id).await {
            Ok(identity) => identity,
            Err(e) => return self.mpi_failed(row, &e, prior).await.map(|()| None),
        };
        if feature.is_some_and(|feature| !self.toggles.is_enabled(feature, &identity.icn)) {
            return self.suppress_for_toggle(row, prior).await.map(|()| None);
        }
        Ok(Some(identity))
    }

    /// Ends the row `suppressed`/`toggle_disabled`: its channel's toggle is off for this Veteran.
    async fn suppress_for_toggle(&self, row: &Claimed, prior: Option<PriorCall>) -> Result<(), sqlx::Error> {
        let suppressed = Transition::Finish { status: Status::Suppressed, reason: "toggle_disabled".into() };
        self.conclude(row, None, suppressed, prior).await
    }

    /// A channel in dry run: resolved, then `skipped`/`dry_run` where the call would have been made.
    async fn dry_run(&self, row: &Claimed, prior: Option<PriorCall>) -> Result<(), sqlx::Error> {
        let skipped = Transition::Finish { status: Status::Skipped, reason: REASON_DRY_RUN.into() };
        self.conclude(row, None, skipped, prior).await
    }

    /// The email template to send: the universal-link one when `requested` is swappable and the feature is on
    /// for the participant. Records what this send used on the row (`sent_template_id`, null = as requested).
    async fn template_to_send(&self, row: &Claimed, requested: uuid::Uuid) -> Result<uuid::Uuid, sqlx::Error> {
        if !self.policies.templates.is_swappable(requested) {
            return Ok(requested);
        }
        let flag_on = self.toggles.is_enabled(UNIVERSAL_LINK_FEATURE, &row.participant_id);
        let sent = self.policies.templates.swap(requested, flag_on);
        super::record_sent_template(&self.pool, row, (sent != requested).then_some(sent)).await?;
        Ok(sent)
    }

    /// The row's template as a UUID (email, SMS); `None` if it is not one (never accepted so).
    fn template_uuid(&self, row: &Claimed) -> Option<uuid::Uuid> {
        uuid::Uuid::parse_str(&row.template_id).ok()
    }

    async fn bad_template(&self, row: &Claimed, prior: Option<PriorCall>) -> Result<(), sqlx::Error> {
        let failed = Transition::Finish { status: Status::Failed, reason: "invalid_template_id".into() };
        self.conclude(row, None, failed, prior).await
    }

    /// Records a VA Notify email or SMS call: `sent` with its id, or what the error calls for.
    async fn after_send(
        &self,
        row: &Claimed,
        result: Result<uuid::Uuid, NotifyError>,
        prior: Option<PriorCall>,
    ) -> Result<(), sqlx::Error> {
        let (call, transition) = match result {
            Ok(id) => (
                CallRecord { outcome: "sent", http_status: Some(201), error_class: None, va_notify_id: Some(id) },
                Transition::Sent { va_notify_id: id },
            ),
            Err(e) => self.failed_call(row, &e),
        };
        // A deferral means the client refused locally: nothing left the process.
        let call = (!matches!(transition, Transition::Defer { .. })).then_some(call);
        self.conclude(row, call, transition, prior).await
    }

    fn failed_call(&self, row: &Claimed, e: &NotifyError) -> (CallRecord, Transition) {
        let call = CallRecord {
            outcome: outcome_label(e.class),
            http_status: e.http_status,
            error_class: Some(e.error),
            va_notify_id: None,
        };
        (call, self.after_notify_error(row.try_in_send(row.attempts), e))
    }

    /// Writes a try's outcome (and how earlier unknown calls turned out) and counts it.
    async fn conclude(
        &self,
        row: &Claimed,
        call: Option<CallRecord>,
        transition: Transition,
        prior: Option<PriorCall>,
    ) -> Result<(), sqlx::Error> {
        if !self.finish.finish(row, call, transition.clone(), prior).await? {
            return lease_lost();
        }
        record(&transition, row);
        Ok(())
    }

    /// An earlier call of this send has no known outcome (a crash while it was in flight, its 201
    /// not yet written; or a timeout): VA Notify may hold the notification. Asks it by reference, once,
    /// and adopts what it holds. Returns `Some` when nothing is held and the send may go ahead; `None`
    /// when the try is over (adopted, or the lookup must wait or be retried: never send on a guess).
    async fn reconcile(&self, row: &Claimed, since: DateTime<Utc>) -> Result<Option<PriorCall>, sqlx::Error> {
        let ready_at = since + self.reconcile_after;
        if Utc::now() < ready_at {
            // The earlier call may still be running at VA Notify; a lookup now could miss it.
            metrics::counter!(m::RECONCILIATIONS, "result" => "wait").increment(1);
            let wait = Transition::Defer { at: ready_at, reason: "reconcile_wait".into() };
            return self.conclude(row, None, wait, None).await.map(|()| None);
        }
        // A resend's earlier sends carry the same reference: only an id we do not know yet is news.
        let known: Vec<uuid::Uuid> = if row.sends > 0 {
            sqlx::query_scalar!(
                r#"select va_notify_id as "va_notify_id!" from notification_attempts
                   where notification_id = $1 and va_notify_id is not null"#,
                row.id
            )
            .fetch_all(&self.pool)
            .await?
        } else {
            Vec::new()
        };
        match self.notify.find_by_reference(row.id).await {
            Ok(ids) => match ids.into_iter().find(|id| !known.contains(id)) {
                Some(va_notify_id) => {
                    metrics::counter!(m::RECONCILIATIONS, "result" => "adopted").increment(1);
                    let adopted = Transition::Adopted { va_notify_id };
                    self.conclude(row, None, adopted, Some(PriorCall::Received(va_notify_id))).await.map(|()| None)
                }
                None => {
                    metrics::counter!(m::RECONCILIATIONS, "result" => "absent").increment(1);
                    Ok(Some(PriorCall::NotReceived))
                }
            },
            Err(e) if e.class == ErrorClass::CircuitOpen => {
                let defer = self.after_notify_error(row.try_in_send(row.attempts), &e);
                self.conclude(row, None, defer, None).await.map(|()| None)
            }
            Err(e) => {
                metrics::counter!(m::RECONCILIATIONS, "result" => "failed").increment(1);
                let call = CallRecord {
                    outcome: "lookup_failed",
                    http_status: e.http_status,
                    error_class: Some(e.error),
                    va_notify_id: None,
                };
                let retry = self.retry_or_dead(row.try_in_send(row.attempts), &format!("va_notify_lookup_{}", e.error));
                self.conclude(row, Some(call), retry, None).await.map(|()| None)
            }
        }
    }

    async fn contact_failed(
        &self,
        row: &Claimed,
        e: &ContactError,
        prior: Option<PriorCall>,
    ) -> Result<(), sqlx::Error> {
        let transition = match e {
            ContactError::NotFound | ContactError::NoFirstName => {
                Transition::Finish { status: Status::Skipped, reason: e.reason().into() }
            }
            ContactError::Misconfigured(_) => {
                tracing::error!(
                    reason = e.reason(),
                    "contact directory is misconfigured; notification failed (replay it once fixed)"
                );
                Transition::Finish { status: Status::Failed, reason: e.reason().into() }
            }
            // A failed lookup counts as a try, so an outage of the directory still ends in `dead`, not a loop.
            ContactError::Transient(_) => self.retry_or_dead(row.try_in_send(row.attempts), e.reason()),
        };
        self.conclude(row, None, transition, prior).await
    }

    /// An MPI answer that gives no ICN: `skipped` (not found, no ICN, deceased), a retry (transient),
    /// else `failed` (misconfiguration logged loudly).
    async fn mpi_failed(&self, row: &Claimed, e: &MpiError, prior: Option<PriorCall>) -> Result<(), sqlx::Error> {
        let transition = if e.is_skip() {
            Transition::Finish { status: Status::Skipped, reason: e.reason().into() }
        } else if e.is_retryable() {
            self.retry_or_dead(row.try_in_send(row.attempts), e.reason())
        } else {
            if matches!(e, MpiError::Misconfigured(_)) {
                tracing::error!(
                    reason = e.reason(),
                    "MPI client is misconfigured; notification failed (replay it once fixed)"
                );
            }
            Transition::Finish { status: Status::Failed, reason: e.reason().into() }
        };
        self.conclude(row, None, transition, prior).await
    }

    /// `attempt` counts tries within the current send.
    fn after_notify_error(&self, attempt: i32, e: &NotifyError) -> Transition {
        let reason = format!("va_notify_{}", e.error);
        match e.class {
            ErrorClass::Retryable => self.retry_or_dead(attempt, &reason),
            // VA's daily limit resets at midnight UTC: park until then instead of hammering it.
            ErrorClass::DailyLimit => {
                Transition::Retry { at: next_utc_midnight(Utc::now()) + jitter(Duration::from_secs(300)), reason }
            }
            ErrorClass::Final => Transition::Finish { status: Status::Failed, reason },
            ErrorClass::CircuitOpen => Transition::Defer { at: Utc::now() + self.breaker_open_for, reason },
        }
    }

    fn retry_or_dead(&self, attempt: i32, reason: &str) -> Transition {
        if attempt >= self.config.max_attempts as i32 {
            return Transition::Finish { status: Status::Dead, reason: reason.to_owned() };
        }
        let delay = backoff::retry_delay(
            attempt as u32,
            self.config.retry_base(),
            self.config.retry_max(),
            rand::random::<f64>(),
        );
        Transition::Retry { at: Utc::now() + delay, reason: reason.to_owned() }
    }
}

/// What one turn of the claim loop claims, from what each lane admits.
#[derive(Debug, PartialEq, Eq)]
struct ClaimPlan {
    /// Half-open lanes: one trial row each.
    trials: Vec<Lane>,
    /// The channels of the closed lanes, claimed together (one statement) up to the free slots.
    open: Vec<&'static str>,
}

impl ClaimPlan {
    fn new(admits: impl Fn(Lane) -> Admits) -> Self {
        let mut plan = Self { trials: Vec::new(), open: Vec::new() };
        for lane in Lane::ALL {
            match admits(lane) {
                Admits::Any => plan.open.extend(channel_names(lane)),
                Admits::OneTrial => plan.trials.push(lane),
                Admits::None => {}
            }
        }
        plan
    }
}

/// The stored channel names of a lane's channels.
fn channel_names(lane: Lane) -> Vec<&'static str> {
    lane.channels().iter().map(|c| c.as_str()).collect()
}

/// The claim loop's trial rows in flight, one lane at most each: between claiming a trial row and its
/// call taking the breaker's trial permit the breaker still says `OneTrial`, so the loop must remember.
#[derive(Default)]
struct Trials {
    notify: AtomicBool,
    push: AtomicBool,
    /// Wakes the loop when a trial has settled, so the lane is claimed for again at once.
    settled: tokio::sync::Notify,
}

impl Trials {
    fn flag(&self, lane: Lane) -> &AtomicBool {
        match lane {
            Lane::Notify => &self.notify,
            Lane::Push => &self.push,
        }
    }

    fn outstanding(&self, lane: Lane) -> bool {
        self.flag(lane).load(Ordering::SeqCst)
    }

    fn begin(&self, lane: Lane) {
        self.flag(lane).store(true, Ordering::SeqCst);
    }

    fn end(&self, lane: Lane) {
        self.flag(lane).store(false, Ordering::SeqCst);
        self.settled.notify_one();
    }
}

/// How long the claim loop waits for more free slots when rows are backed up.
const CLAIM_GATHER: Duration = Duration::from_millis(2);

fn lease_lost() -> Result<(), sqlx::Error> {
    // Also where the finish statement refused the move (the row is no longer `sending`).
    tracing::warn!("lease expired before the outcome was recorded; another worker owns the row now");
    Ok(())
}

fn outcome_label(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Retryable => "retryable",
        ErrorClass::DailyLimit => "daily_limit",
        ErrorClass::Final => "final",
        ErrorClass::CircuitOpen => "circuit_open",
    }
}

/// Counts the transition; reasons are built from bounded labels only. `sent` and the error-rate
/// denominator count each notification once (its first send); later sends count as resends.
/// `ebg_deliveries_total` and `ebg_delivery_attempted_total` carry the row's `channel` (email, sms, push),
/// so an error rate per channel can be read from `/metrics`.
fn record(transition: &Transition, row: &Claimed) {
    let first_send = row.sends == 0;
    let channel = channel_label(&row.channel);
    let delivered = |status: &'static str, reason: String| {
        metrics::counter!(m::DELIVERIES, "status" => status, "reason" => reason, "channel" => channel).increment(1);
    };
    match transition {
        Transition::Sent { .. } | Transition::Pushed if first_send => {
            let reason = if matches!(transition, Transition::Pushed) { "push_accepted" } else { "va_notify_accepted" };
            delivered("sent", reason.into());
            metrics::counter!(m::DELIVERY_ATTEMPTED, "channel" => channel).increment(1);
            tracing::info!(status = "sent", channel, "notification sent");
        }
        Transition::Sent { .. } | Transition::Pushed => {
            metrics::counter!(m::RESENDS).increment(1);
            tracing::info!(status = "sent", channel, sends = row.sends + 1, "notification resent");
        }
        Transition::Adopted { .. } if first_send => {
            delivered("sent", "reconciled".into());
            metrics::counter!(m::DELIVERY_ATTEMPTED, "channel" => channel).increment(1);
            tracing::info!(status = "sent", reason = "reconciled", "VA Notify already held the notification; adopted");
        }
        Transition::Adopted { .. } => {
            metrics::counter!(m::RESENDS).increment(1);
            tracing::info!(status = "sent", reason = "reconciled", sends = row.sends + 1, "resend adopted");
        }
        Transition::Retry { reason, .. } | Transition::Defer { reason, .. } => {
            metrics::counter!(m::RETRIES, "reason" => reason.clone()).increment(1);
            tracing::info!(status = "retry_wait", reason = %reason, "notification will be retried");
        }
        Transition::Finish { status, reason } => {
            delivered(status.as_str(), reason.clone());
            if first_send && matches!(status, Status::Failed | Status::Dead) {
                metrics::counter!(m::DELIVERY_ATTEMPTED, "channel" => channel).increment(1);
            }
            if *status == Status::Dead {
                metrics::counter!(m::DEAD_LETTERS).increment(1);
            }
            tracing::info!(status = status.as_str(), channel, reason = %reason, "notification finished");
        }
    }
}

/// The bounded `channel` label of a row's channel.
fn channel_label(channel: &str) -> &'static str {
    super::CHANNELS.iter().copied().find(|c| *c == channel).unwrap_or("other")
}

fn next_utc_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now.date_naive().checked_add_days(Days::new(1)).unwrap_or(now.date_naive());
    tomorrow.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or(now)
}

fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lane_is_claimed_for_as_its_breaker_admits() {
        let plan = |notify, push| ClaimPlan::new(|lane| if lane == Lane::Notify { notify } else { push });
        let all = ClaimPlan { trials: vec![], open: vec![CHANNEL_EMAIL, CHANNEL_SMS, CHANNEL_PUSH] };
        assert_eq!(plan(Admits::Any, Admits::Any), all);
        assert_eq!(
            plan(Admits::Any, Admits::None),
            ClaimPlan { trials: vec![], open: vec![CHANNEL_EMAIL, CHANNEL_SMS] }
        );
        assert_eq!(plan(Admits::None, Admits::OneTrial), ClaimPlan { trials: vec![Lane::Push], open: vec![] });
        assert_eq!(
            plan(Admits::OneTrial, Admits::Any),
            ClaimPlan { trials: vec![Lane::Notify], open: vec![CHANNEL_PUSH] }
        );
        assert_eq!(plan(Admits::None, Admits::None), ClaimPlan { trials: vec![], open: vec![] });
    }

    #[test]
    fn daily_limit_parks_until_midnight_utc() {
        let now: DateTime<Utc> = "2026-11-24T17:30:00Z".parse().unwrap();
        assert_eq!(next_utc_midnight(now), "2026-11-25T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
    }
}
