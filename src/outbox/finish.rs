//! Group commit for delivery outcomes: deliveries that finish while a commit is in progress are
//! recorded together in the next one (the same idea as the accept path). Each delivery learns
//! whether its outcome was written (its lease still held) only after the commit.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::batch::spawn_writers;
use super::lifecycle;
use super::{CallRecord, Claimed, PriorCall, Transition, finish_try, prior_columns};

/// Outcomes waiting for a writer; at most one per delivery slot is ever queued.
const QUEUE_CAPACITY: usize = 4096;
/// Outcomes per transaction.
const MAX_BATCH: usize = 64;
/// Writer tasks (each holds one connection while committing).
const WRITERS: usize = 2;

struct Job {
    row: Claimed,
    call: Option<CallRecord>,
    transition: Transition,
    prior: Option<PriorCall>,
    reply: oneshot::Sender<Result<bool, sqlx::Error>>,
}

/// Records delivery outcomes with group commit; cheap to clone.
#[derive(Clone)]
pub struct FinishQueue {
    jobs: mpsc::Sender<Job>,
}

impl FinishQueue {
    pub fn start(pool: PgPool) -> Self {
        let (jobs, receiver) = mpsc::channel(QUEUE_CAPACITY);
        spawn_writers(receiver, WRITERS, MAX_BATCH, move |batch| {
            let pool = pool.clone();
            async move { commit(&pool, batch).await }
        });
        Self { jobs }
    }

    /// Same contract as [`finish_try`]: true if written, false if the lease was lost.
    pub async fn finish(
        &self,
        row: &Claimed,
        call: Option<CallRecord>,
        transition: Transition,
        prior: Option<PriorCall>,
    ) -> Result<bool, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let job = Job { row: row.clone(), call, transition, prior, reply };
        if self.jobs.send(job).await.is_err() {
            return Err(sqlx::Error::PoolClosed);
        }
        answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}

async fn commit(pool: &PgPool, batch: Vec<Job>) {
    if batch.len() > 1 {
        match finish_many(pool, &batch).await {
            Ok(written) => {
                for job in batch {
                    let _ = job.reply.send(Ok(written.contains(&job.row.id)));
                }
                return;
            }
            Err(e) => tracing::debug!(error = %e, size = batch.len(), "batched finish failed; retrying one by one"),
        }
    }
    for job in batch {
        let result = finish_try(pool, &job.row, job.call.as_ref(), &job.transition, job.prior).await;
        let _ = job.reply.send(result);
    }
}

/// The batched form of [`finish_try`]: the same state rules, one statement for many rows (each row
/// is leased to exactly one delivery, so batches never contend for the same rows).
async fn finish_many(pool: &PgPool, batch: &[Job]) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut leases = Vec::with_capacity(batch.len());
    let mut statuses = Vec::with_capacity(batch.len());
    let mut reasons: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    let mut next_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(batch.len());
    let mut va_ids: Vec<Option<Uuid>> = Vec::with_capacity(batch.len());
    let mut deltas = Vec::with_capacity(batch.len());
    let mut attempts = Vec::with_capacity(batch.len());
    let mut outcomes: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    let mut http_statuses: Vec<Option<i32>> = Vec::with_capacity(batch.len());
    let mut error_classes: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    let mut call_va_ids: Vec<Option<Uuid>> = Vec::with_capacity(batch.len());
    let mut prior_outcomes: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    let mut prior_ids: Vec<Option<Uuid>> = Vec::with_capacity(batch.len());
    for job in batch {
        let (prior_outcome, prior_id) = prior_columns(job.prior);
        prior_outcomes.push(prior_outcome);
        prior_ids.push(prior_id);
        let change = job.transition.row_change();
        ids.push(job.row.id);
        leases.push(job.row.lease_token);
        statuses.push(change.status);
        reasons.push(change.reason);
        next_at.push(change.next_attempt_at);
        va_ids.push(change.va_notify_id);
        deltas.push(change.attempts_delta);
        attempts.push(job.row.attempts);
        outcomes.push(job.call.as_ref().map(|c| c.outcome));
        http_statuses.push(job.call.as_ref().and_then(|c| c.http_status.map(i32::from)));
        error_classes.push(job.call.as_ref().and_then(|c| c.error_class));
        call_va_ids.push(job.call.as_ref().and_then(|c| c.va_notify_id));
    }
    sqlx::query_file_scalar!(
        "src/outbox/sql/finish.sql",
        &ids,
        &leases,
        &statuses as &[&str],
        &reasons as &[Option<&str>],
        &next_at as &[Option<DateTime<Utc>>],
        &va_ids as &[Option<Uuid>],
        &deltas,
        &attempts,
        &outcomes as &[Option<&str>],
        &http_statuses as &[Option<i32>],
        &error_classes as &[Option<&str>],
        &call_va_ids as &[Option<Uuid>],
        &prior_outcomes as &[Option<&str>],
        &prior_ids as &[Option<Uuid>],
        &lifecycle::names(&lifecycle::OUTCOME_FROM) as &[&str],
    )
    .fetch_all(pool)
    .await
}
