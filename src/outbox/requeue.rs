//! The one statement that queues a notification again: a callback's resend, a release of suppressed
//! mail, an operator's replay. What differs between them is data ([`Requeue`]), not SQL.

use sqlx::PgExecutor;
use uuid::Uuid;

use super::lifecycle::{Budget, Requeue};

/// Queues those of `ids` that are still in one of `requeue.from`; returns the ids changed. A row
/// that moved meanwhile is left alone, so requeueing twice queues once.
pub async fn requeue<'e>(
    executor: impl PgExecutor<'e>,
    ids: &[Uuid],
    requeue: &Requeue,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "update notifications set status = 'queued', status_reason = $3, updated_at = now(),
             next_attempt_at = now() + make_interval(secs => $4),
             attempts_before_send = case when $5 then attempts else attempts_before_send end
         where id = any($1) and status = any($2)
         returning id",
        ids,
        &requeue.from_names() as &[&str],
        requeue.reason.as_deref(),
        requeue.at.seconds(),
        requeue.budget == Budget::Fresh,
    )
    .fetch_all(executor)
    .await
}
