//! Group commit for the accept path: requests that arrive while a commit is in progress are
//! recorded together in the next one. Each caller is answered only after the transaction holding
//! its row has committed, so the "2xx only after commit" rule holds per request, while the cost of a
//! commit (a WAL flush) is shared by everyone in the batch.
//!
//! Nothing waits on a timer: a lone request is committed at once; batches form only under load.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{AcceptError, Accepted, NewNotification, pg_interval};

/// Requests waiting for a writer; beyond this, callers wait (back-pressure instead of memory growth).
const QUEUE_CAPACITY: usize = 4096;

struct Job {
    new: NewNotification,
    reply: oneshot::Sender<Result<Accepted, AcceptError>>,
}

/// Handle the HTTP handlers use; cheap to clone. Writer tasks stop when the last handle is dropped.
#[derive(Clone)]
pub struct AcceptQueue {
    jobs: mpsc::Sender<Job>,
}

impl AcceptQueue {
    /// Starts `writers` tasks, each committing up to `max_batch` requests per transaction.
    pub fn start(pool: PgPool, duplicate_window: Duration, max_batch: usize, writers: usize) -> Self {
        let (jobs, receiver) = mpsc::channel(QUEUE_CAPACITY);
        spawn_writers(receiver, writers, max_batch, move |batch| {
            let pool = pool.clone();
            async move {
                metrics::histogram!(crate::metrics::ACCEPT_BATCH_SIZE).record(batch.len() as f64);
                commit(&pool, batch, duplicate_window).await;
            }
        });
        Self { jobs }
    }

    /// Records one request; returns once it is committed (or failed).
    pub async fn accept(&self, new: NewNotification) -> Result<Accepted, AcceptError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { new, reply }).await.map_err(|_| AcceptError::Closed)?;
        answer.await.map_err(|_| AcceptError::Closed)?
    }
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

/// Commits a batch in one statement; if the batch as a whole fails (for example a deadlock with
/// another replica), each request is retried alone so one bad row cannot fail its neighbours.
async fn commit(pool: &PgPool, mut batch: Vec<Job>, duplicate_window: Duration) {
    if batch.len() == 1 {
        if let Some(job) = batch.pop() {
            let result = super::accept(pool, &job.new, duplicate_window).await;
            let _ = job.reply.send(result);
        }
        return;
    }
    // A single global lock order (keyed requests by key, then the rest by participant and template)
    // makes concurrent batches, here or on other replicas, unable to deadlock on each other's locks.
    batch.sort_by(|a, b| lock_order(&a.new).cmp(&lock_order(&b.new)));
    match accept_many(pool, &batch, duplicate_window).await {
        Ok(results) => {
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, size = batch.len(), "batched accept failed; retrying one by one");
            for job in batch {
                let result = super::accept(pool, &job.new, duplicate_window).await;
                let _ = job.reply.send(result);
            }
        }
    }
}

fn lock_order(new: &NewNotification) -> (bool, &str, &str, Uuid) {
    match &new.idempotency_key {
        Some(key) => (false, key.as_str(), "", Uuid::nil()),
        None => (true, new.channel, &new.participant_id, new.template_id),
    }
}

async fn accept_many(
    pool: &PgPool,
    batch: &[Job],
    duplicate_window: Duration,
) -> Result<Vec<Result<Accepted, AcceptError>>, sqlx::Error> {
    let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::new_v4()).collect();
    let channels: Vec<&str> = batch.iter().map(|j| j.new.channel).collect();
    let participants: Vec<&str> = batch.iter().map(|j| j.new.participant_id.as_str()).collect();
    let templates: Vec<Uuid> = batch.iter().map(|j| j.new.template_id).collect();
    let keys: Vec<Option<&str>> = batch.iter().map(|j| j.new.idempotency_key.as_deref()).collect();
    let enabled: Vec<bool> = batch.iter().map(|j| j.new.enabled).collect();
    // One statement is one transaction: every row commits together or none does.
    let rows: Vec<(i64, Uuid, String, bool, bool)> = sqlx::query_as(
        "select r.ord, a.id, a.status, a.replayed, a.key_conflict
         from unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::bool[])
              with ordinality as r(id, channel, participant_id, template_id, idempotency_key, enabled, ord)
         cross join lateral accept_notification(r.id, r.channel, r.participant_id, r.template_id,
                                                r.idempotency_key, r.enabled, $7) a
         order by r.ord",
    )
    .bind(&ids)
    .bind(&channels)
    .bind(&participants)
    .bind(&templates)
    .bind(&keys)
    .bind(&enabled)
    .bind(pg_interval(duplicate_window))
    .fetch_all(pool)
    .await?;
    if rows.len() != batch.len() {
        return Err(sqlx::Error::Protocol(format!("batched accept returned {} rows for {}", rows.len(), batch.len())));
    }
    Ok(rows
        .into_iter()
        .map(|(_, id, status, replayed, key_conflict)| super::to_accepted(id, &status, replayed, key_conflict))
        .collect())
}
