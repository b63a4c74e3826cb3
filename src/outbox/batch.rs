//! Group commit for the accept path: requests that arrive while a commit is in progress are
//! recorded together in the next one. Each caller is answered only after the transaction holding
//! its row has committed, so the "2xx only after commit" rule holds per request, while the cost of a
//! commit (a WAL flush) is shared by everyone in the batch.
//!
//! The promise also holds the other way: a request answered 503, or whose caller went away, is never
//! recorded later. Each job carries a state flag. A writer *takes* a job (waiting → taken) only once it
//! holds a connection, immediately before its transaction; a handler *gives up* (waiting → abandoned)
//! only before that, at `accept.deadline_ms` or when its future is dropped. The two are one
//! compare-and-swap on the same flag, so exactly one of them wins: an abandoned job is never written,
//! and a taken job's handler waits for the answer, which comes within `accept.transaction_timeout_ms`
//! (statement_timeout on the writers' connections, plus a client-side bound for a network that hangs).
//!
//! The transaction is explicit (BEGIN … COMMIT): a connection lost before COMMIT is sent leaves nothing
//! behind, whereas an implicit single-statement commit would complete on the server after the client
//! gave up. What remains is a COMMIT whose acknowledgement is lost: it is answered 503, counted in
//! `ebg_accept_commit_unknown_total`, and its rows are withdrawn once the database answers again
//! wherever that is still safe (`withdraw_unacknowledged`; outcomes in `ebg_accept_in_doubt_total`).
//!
//! Nothing waits on a timer: a lone request is committed at once; batches form only under load.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgConnection, PgPool, Postgres};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::{AcceptError, Accepted, NewNotification, pg_interval};
use crate::metrics as m;

/// Requests waiting for a writer; beyond this, callers wait (back-pressure instead of memory growth).
const QUEUE_CAPACITY: usize = 4096;

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// Who owns a request's fate: its handler (until it gives up) or a writer (once it took the job).
#[derive(Clone, Default)]
struct Claim(Arc<AtomicU8>);

impl Claim {
    /// Writer side: true if the job is now ours to write.
    fn take(&self) -> bool {
        self.0.compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Handler side: true if the job was waiting and is now given up (it will never be written);
    /// false if a writer took it first (or it was given up before).
    fn abandon(&self) -> bool {
        self.0.compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// Gives the job up if the handler's future is dropped before a writer took it (the client hung up,
/// or the request timeout fired).
struct AbandonOnDrop(Claim);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if self.0.abandon() {
            metrics::counter!(m::ACCEPT_ABANDONED, "reason" => "caller_gone").increment(1);
        }
    }
}

/// One request: its rows (one per channel) are recorded in one transaction, and answered together.
struct Job {
    rows: Vec<NewNotification>,
    reply: oneshot::Sender<Result<Vec<Accepted>, AcceptError>>,
    claim: Claim,
}

impl Job {
    fn answer(self, result: Result<Vec<Accepted>, AcceptError>) {
        let _ = self.reply.send(result);
    }
}

/// Handle the HTTP handlers use; cheap to clone. Writer tasks stop when the last handle is dropped.
#[derive(Clone)]
pub struct AcceptQueue {
    jobs: mpsc::Sender<Job>,
    deadline: Duration,
}

/// How the accept path is bounded (from `[accept]`).
#[derive(Clone, Copy, Debug)]
pub struct AcceptLimits {
    pub duplicate_window: Duration,
    pub max_batch: usize,
    pub writers: usize,
    /// How long a request may wait to be taken into a transaction.
    pub deadline: Duration,
    /// Bound on a transaction once its requests are taken.
    pub transaction_timeout: Duration,
}

impl AcceptQueue {
    /// Starts `limits.writers` tasks, each committing up to `limits.max_batch` requests per transaction.
    /// `pool` should be the writers' own (see [`crate::db::connect_accept_pool`]): waiting for a
    /// connection then means waiting for the database, not for other work.
    pub fn start(pool: PgPool, limits: AcceptLimits) -> Self {
        let (jobs, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let in_doubt = InDoubt::default();
        tokio::spawn(resolve_in_doubt(pool.clone(), in_doubt.clone(), jobs.downgrade()));
        spawn_writers(receiver, limits.writers, limits.max_batch, move |batch| {
            let (pool, in_doubt) = (pool.clone(), in_doubt.clone());
            async move { commit(&pool, batch, limits, &in_doubt).await }
        });
        Self { jobs, deadline: limits.deadline }
    }

    /// Records one single-channel request (see [`AcceptQueue::accept_request`]).
    pub async fn accept(&self, new: NewNotification) -> Result<Accepted, AcceptError> {
        let mut accepted = self.accept_request(vec![new]).await?;
        accepted.pop().ok_or_else(|| AcceptError::NotRecorded("no row returned".into()))
    }

    /// Records one request: a row per channel (`rows`, channels distinct, one participant and
    /// Idempotency-Key), all in one transaction. Returns once it is committed, in the order of `rows`,
    /// or with an error once it is certain it never will be (except [`AcceptError::CommitUnknown`]).
    pub async fn accept_request(&self, rows: Vec<NewNotification>) -> Result<Vec<Accepted>, AcceptError> {
        let deadline = Instant::now() + self.deadline;
        let claim = Claim::default();
        let _abandon_on_drop = AbandonOnDrop(claim.clone());
        let (reply, mut answer) = oneshot::channel();
        match tokio::time::timeout_at(deadline, self.jobs.send(Job { rows, reply, claim: claim.clone() })).await {
            Err(_) => return Err(deadline_passed(&claim)),
            Ok(Err(_)) => return Err(AcceptError::Closed),
            Ok(Ok(())) => {}
        }
        tokio::select! {
            result = &mut answer => return result.map_err(|_| AcceptError::Closed)?,
            () = tokio::time::sleep_until(deadline) => {}
        }
        if claim.abandon() {
            return Err(deadline_passed(&claim));
        }
        // A writer took it: its transaction is bounded, so the answer is on its way.
        answer.await.map_err(|_| AcceptError::Closed)?
    }
}

/// Gives up a job whose deadline passed while it waited (already given up when called from `accept`).
fn deadline_passed(claim: &Claim) -> AcceptError {
    claim.abandon();
    metrics::counter!(m::ACCEPT_ABANDONED, "reason" => "deadline").increment(1);
    AcceptError::Deadline
}

/// Starts `writers` tasks that each take the first queued job and whatever else is already queued
/// (up to `max_batch`) and hand the batch to `commit`. They stop when every sender is dropped.
pub(super) fn spawn_writers<J, F, Fut>(receiver: mpsc::Receiver<J>, writers: usize, max_batch: usize, commit: F)
where
    J: Send + 'static,
    F: Fn(Vec<J>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let receiver = Arc::new(Mutex::new(receiver));
    let max_batch = max_batch.max(1);
    for _ in 0..writers.max(1) {
        let (receiver, commit) = (receiver.clone(), commit.clone());
        tokio::spawn(async move {
            loop {
                let mut batch = Vec::with_capacity(max_batch);
                {
                    // One writer gathers at a time, so batches are as large as the queue allows.
                    let mut receiver = receiver.lock().await;
                    if receiver.recv_many(&mut batch, max_batch).await == 0 {
                        return;
                    }
                }
                commit(batch).await;
            }
        });
    }
}

/// Writes one batch: wait for a connection, take the jobs whose callers still wait, then commit them
/// in one bounded transaction.
async fn commit(pool: &PgPool, batch: Vec<Job>, limits: AcceptLimits, in_doubt: &InDoubt) {
    // Waiting for the database happens before any job is taken, so it counts against each request's
    // deadline and never against the transaction bound.
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            let cause = e.to_string();
            for job in batch {
                job.answer(Err(AcceptError::NotRecorded(cause.clone())));
            }
            return;
        }
    };
    let taken: Vec<Job> = batch.into_iter().filter(|job| job.claim.take()).collect();
    if taken.is_empty() {
        return;
    }
    metrics::histogram!(m::ACCEPT_BATCH_SIZE).record(taken.len() as f64);
    let deadline = Instant::now() + limits.transaction_timeout;
    if !write(&mut conn, taken, limits.duplicate_window, deadline, in_doubt).await {
        // Possibly mid-transaction or wedged: never hand it back to the pool.
        drop(PoolConnection::<Postgres>::detach(conn));
    }
}

/// Commits `jobs` together; if that fails on a database error (a deadlock, one bad row), each is tried
/// alone until the bound is reached. Every job is answered. Returns whether the connection is reusable.
async fn write(
    conn: &mut PgConnection,
    jobs: Vec<Job>,
    window: Duration,
    deadline: Instant,
    in_doubt: &InDoubt,
) -> bool {
    let error = match transaction(conn, &jobs, window, deadline).await {
        Tx::Committed(results) => {
            for (job, result) in jobs.into_iter().zip(results) {
                job.answer(result);
            }
            return true;
        }
        Tx::Unknown(ids) => {
            commit_unknown(jobs, ids, in_doubt);
            return false;
        }
        Tx::Failed { error, connection_ok: false } => {
            let cause = error.to_string();
            for job in jobs {
                job.answer(Err(AcceptError::NotRecorded(cause.clone())));
            }
            return false;
        }
        Tx::Failed { error, connection_ok: true } if jobs.len() == 1 => {
            if let Some(job) = jobs.into_iter().next() {
                job.answer(Err(AcceptError::Database(error)));
            }
            return true;
        }
        Tx::Failed { error, connection_ok: true } => error,
    };
    tracing::debug!(error = %error, size = jobs.len(), "batched accept failed; retrying one by one");
    let mut usable = true;
    for job in jobs {
        if !usable || Instant::now() >= deadline {
            job.answer(Err(AcceptError::NotRecorded("accept.transaction_timeout_ms reached".into())));
            continue;
        }
        match transaction(conn, std::slice::from_ref(&job), window, deadline).await {
            Tx::Committed(mut results) => {
                let result = results.pop().unwrap_or_else(|| Err(AcceptError::NotRecorded("no row returned".into())));
                job.answer(result);
            }
            Tx::Unknown(ids) => {
                commit_unknown(vec![job], ids, in_doubt);
                usable = false;
            }
            Tx::Failed { error, connection_ok } => {
                usable = connection_ok;
                job.answer(Err(AcceptError::Database(error)));
            }
        }
    }
    usable
}

/// The one case the deadline cannot settle: COMMIT was sent and its answer lost. Answered 503 and
/// counted; the ids go to the resolver, which withdraws the rows that are safe to withdraw.
fn commit_unknown(jobs: Vec<Job>, ids: Vec<Uuid>, in_doubt: &InDoubt) {
    metrics::counter!(m::ACCEPT_COMMIT_UNKNOWN).increment(jobs.len() as u64);
    tracing::warn!(?ids, "accept COMMIT sent but not acknowledged; answered 503, withdrawing once possible");
    in_doubt.add(ids);
    for job in jobs {
        job.answer(Err(AcceptError::CommitUnknown));
    }
}

/// Ids whose COMMIT went unacknowledged, waiting to be withdrawn. Kept in memory only: if the process
/// dies first, the rows stand (and are delivered; the caller's retry is then a `duplicate`).
#[derive(Clone, Default)]
struct InDoubt {
    ids: Arc<std::sync::Mutex<Vec<Uuid>>>,
    added: Arc<Notify>,
}

impl InDoubt {
    fn add(&self, ids: Vec<Uuid>) {
        self.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(ids);
        self.added.notify_one();
    }

    fn take(&self) -> Vec<Uuid> {
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// How often the resolver retries while the database does not answer.
const RESOLVE_RETRY: Duration = Duration::from_millis(200);

/// Withdraws in-doubt rows as soon as the database answers; stops with the queue.
async fn resolve_in_doubt(pool: PgPool, in_doubt: InDoubt, queue: mpsc::WeakSender<Job>) {
    loop {
        tokio::select! {
            () = in_doubt.added.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if queue.upgrade().is_none() {
            return;
        }
        let mut pending = in_doubt.take();
        while !pending.is_empty() {
            pending = withdraw(&pool, pending).await;
            if !pending.is_empty() {
                tokio::time::sleep(RESOLVE_RETRY).await;
            }
        }
    }
}

/// One transaction per id: each takes its own advisory lock, so no lock order is needed. Returns the
/// ids the database could not be asked about yet.
async fn withdraw(pool: &PgPool, ids: Vec<Uuid>) -> Vec<Uuid> {
    let mut unresolved = Vec::new();
    for id in ids {
        let answer: Result<String, _> =
            sqlx::query_scalar("select resolution from withdraw_unacknowledged(array[$1]::uuid[])")
                .bind(id)
                .fetch_one(pool)
                .await;
        let resolution = match answer.as_deref() {
            Ok("absent") => "absent",
            Ok("withdrawn") => "withdrawn",
            Ok(_) => "kept",
            Err(_) => {
                unresolved.push(id);
                continue;
            }
        };
        metrics::counter!(m::ACCEPT_IN_DOUBT, "resolution" => resolution).increment(1);
        tracing::info!(notification_id = %id, resolution, "unacknowledged accept resolved");
    }
    unresolved
}

enum Tx {
    /// One result per job, in order.
    Committed(Vec<Result<Vec<Accepted>, AcceptError>>),
    /// Rolled back, or never started: nothing was recorded.
    Failed { error: sqlx::Error, connection_ok: bool },
    /// COMMIT was sent but not acknowledged in time; these ids may or may not exist.
    Unknown(Vec<Uuid>),
}

fn bound_reached() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "accept.transaction_timeout_ms reached"))
}

/// One explicit transaction, every step bounded by `deadline`. The server never commits unless it
/// receives COMMIT, so any failure before that point is a clean "not recorded".
async fn transaction(conn: &mut PgConnection, jobs: &[Job], window: Duration, deadline: Instant) -> Tx {
    let ids: Vec<Uuid> = jobs.iter().flat_map(|job| job.rows.iter().map(|_| Uuid::new_v4())).collect();
    let mut tx = match tokio::time::timeout_at(deadline, conn.begin()).await {
        Ok(Ok(tx)) => tx,
        Ok(Err(error)) => return Tx::Failed { error, connection_ok: false },
        Err(_) => return Tx::Failed { error: bound_reached(), connection_ok: false },
    };
    let results = match tokio::time::timeout_at(deadline, accept_many(&mut tx, &ids, jobs, window)).await {
        Ok(Ok(results)) => results,
        Ok(Err(error)) => {
            // A database error (statement_timeout included) leaves the connection usable once rolled back.
            let rolled_back = matches!(error, sqlx::Error::Database(_))
                && matches!(tokio::time::timeout_at(deadline, tx.rollback()).await, Ok(Ok(())));
            return Tx::Failed { error, connection_ok: rolled_back };
        }
        Err(_) => return Tx::Failed { error: bound_reached(), connection_ok: false },
    };
    match tokio::time::timeout_at(deadline, tx.commit()).await {
        Ok(Ok(())) => Tx::Committed(results),
        // The server answered and refused: rolled back, a known outcome.
        Ok(Err(error @ sqlx::Error::Database(_))) => Tx::Failed { error, connection_ok: true },
        Ok(Err(_)) | Err(_) => Tx::Unknown(ids),
    }
}

/// A single global lock order (keyed rows by key, then the rest by channel, participant and template)
/// makes concurrent batches, here or on other replicas, unable to deadlock on each other's locks. It is
/// an order of rows, not of requests: a request's rows may take several locks.
fn lock_order(new: &NewNotification) -> (bool, &str, &str, &str) {
    match &new.idempotency_key {
        Some(key) => (false, key.as_str(), "", ""),
        None => (true, new.channel, &new.participant_id, &new.template_id),
    }
}

/// Records every row of `batch` in one statement (`accept_notification` per row, in lock order) and
/// answers per job: its rows in its own order, or `KeyConflict` if its key belongs to another request.
async fn accept_many(
    conn: &mut PgConnection,
    ids: &[Uuid],
    batch: &[Job],
    duplicate_window: Duration,
) -> Result<Vec<Result<Vec<Accepted>, AcceptError>>, sqlx::Error> {
    // (job, row within the job, row, the job's request id and sorted channel list)
    let mut rows: Vec<(usize, usize, &NewNotification, Uuid, String)> = Vec::with_capacity(ids.len());
    for (j, job) in batch.iter().enumerate() {
        let request_id = Uuid::new_v4();
        let mut channels: Vec<&str> = job.rows.iter().map(|r| r.channel).collect();
        channels.sort_unstable();
        let channels = channels.join(",");
        for (k, row) in job.rows.iter().enumerate() {
            rows.push((j, k, row, request_id, channels.clone()));
        }
    }
    rows.sort_by(|a, b| lock_order(a.2).cmp(&lock_order(b.2)));
    let requests: Vec<Uuid> = rows.iter().map(|r| r.3).collect();
    let channels: Vec<&str> = rows.iter().map(|r| r.2.channel).collect();
    let participants: Vec<&str> = rows.iter().map(|r| r.2.participant_id.as_str()).collect();
    let templates: Vec<&str> = rows.iter().map(|r| r.2.template_id.as_str()).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.2.idempotency_key.as_deref()).collect();
    let request_channels: Vec<&str> = rows.iter().map(|r| r.4.as_str()).collect();
    let enabled: Vec<bool> = rows.iter().map(|r| r.2.enabled).collect();
    let answers: Vec<(i64, Uuid, String, bool, bool)> = sqlx::query_as(
        "select r.ord, a.id, a.status, a.replayed, a.key_conflict
         from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bool[])
              with ordinality as r(id, request_id, channel, participant_id, template_id, idempotency_key,
                                   request_channels, enabled, ord)
         cross join lateral accept_notification(r.id, r.request_id, r.channel, r.participant_id, r.template_id,
                                                r.idempotency_key, string_to_array(r.request_channels, ','),
                                                r.enabled, $9) a
         order by r.ord",
    )
    .bind(ids)
    .bind(&requests)
    .bind(&channels)
    .bind(&participants)
    .bind(&templates)
    .bind(&keys)
    .bind(&request_channels)
    .bind(&enabled)
    .bind(pg_interval(duplicate_window))
    .fetch_all(&mut *conn)
    .await?;
    if answers.len() != rows.len() {
        return Err(sqlx::Error::Protocol(format!(
            "batched accept returned {} rows for {}",
            answers.len(),
            rows.len()
        )));
    }
    let mut results: Vec<Vec<Option<Result<Accepted, AcceptError>>>> =
        batch.iter().map(|job| job.rows.iter().map(|_| None).collect()).collect();
    for ((j, k, ..), (_, id, status, replayed, key_conflict)) in rows.iter().zip(answers) {
        results[*j][*k] = Some(super::to_accepted(id, &status, replayed, key_conflict));
    }
    Ok(results
        .into_iter()
        .map(|job| {
            job.into_iter()
                .map(|row| row.unwrap_or_else(|| Err(AcceptError::NotRecorded("no row returned".into()))))
                .collect()
        })
        .collect())
}
