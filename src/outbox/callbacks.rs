//! The statements behind a VA Notify callback: finding and locking its notification, and applying
//! the [`Effect`] that [`super::lifecycle::decide`] chose. The callback record itself
//! (`notification_events`) belongs to [`crate::callbacks`].

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use super::lifecycle::{self, Effect, Requeue, Status};

/// A notification as a callback finds it, locked until the transaction ends.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Locked {
    pub id: Uuid,
    pub status: String,
    pub sends: i32,
    pub va_notify_id: Option<Uuid>,
    /// `email`, `sms` or `push`: whose resend policy applies.
    pub channel: String,
}

/// Locks the notification named by `reference` (our id) or else by VA Notify's `va_id`.
pub async fn lock_for_callback(
    conn: &mut PgConnection,
    reference: Option<Uuid>,
    va_id: Option<Uuid>,
) -> Result<Option<Locked>, sqlx::Error> {
    let mut row = None;
    if let Some(reference) = reference {
        row = sqlx::query_as!(
            Locked,
            "select id, status, sends, va_notify_id, channel from notifications where id = $1 for update",
            reference
        )
        .fetch_optional(&mut *conn)
        .await?;
    }
    if let (None, Some(va_id)) = (&row, va_id) {
        row = sqlx::query_as!(
            Locked,
            "select id, status, sends, va_notify_id, channel from notifications where va_notify_id = $1 limit 1 for update",
            va_id
        )
        .fetch_optional(&mut *conn)
        .await?;
    }
    Ok(row)
}

/// Applies `effect` to the locked notification `id`. `reason` is VA Notify's (stored trimmed),
/// `va_notify_id` the callback's id, `resend_delay` the channel's (`callbacks.resend_delay_seconds` for email,
/// `sms.resend_delay_seconds` for SMS).
///
/// Every statement is guarded by the lifecycle ([`lifecycle::sources`], [`Requeue`]): a row whose
/// state does not allow the move is left as it is, and the answer is false (refused). [`Effect::Record`]
/// and [`Effect::NotYet`] change nothing and answer true.
pub async fn apply_callback(
    conn: &mut PgConnection,
    id: Uuid,
    effect: Effect,
    reason: Option<String>,
    va_notify_id: Option<Uuid>,
    resend_delay: Duration,
) -> Result<bool, sqlx::Error> {
    let changed = match effect {
        Effect::Move(next) => {
            let reason = if next == Status::Delivered { None } else { reason };
            sqlx::query!(
                "update notifications set status = $2, status_reason = $3, next_attempt_at = null, updated_at = now(),
                     delivered_at = case when $2 = 'delivered' then now() else delivered_at end,
                     va_notify_id = coalesce(va_notify_id, $4)
                 where id = $1 and status = any($5)",
                id,
                next.as_str(),
                reason,
                va_notify_id,
                &lifecycle::names(&lifecycle::sources(next)) as &[&str],
            )
            .execute(conn)
            .await?
            .rows_affected()
        }
        Effect::Resend => {
            // Same row, same reference; the worker's retry budget starts afresh for the new send.
            super::requeue::requeue(conn, &[id], &Requeue::resend(reason, resend_delay)).await?.len() as u64
        }
        Effect::Dead => sqlx::query!(
            "update notifications set status = 'dead', status_reason = $2, next_attempt_at = null, updated_at = now()
                 where id = $1 and status = any($3)",
            id,
            reason,
            &lifecycle::names(&lifecycle::sources(Status::Dead)) as &[&str],
        )
        .execute(conn)
        .await?
        .rows_affected(),
        Effect::Record | Effect::NotYet => return Ok(true),
    };
    Ok(changed > 0)
}
