//! The statement behind a release of suppressed mail ([`crate::toggles::release`]): the candidates,
//! locked until the caller's transaction requeues some of them (see [`super::requeue()`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// A suppressed notification that a release may queue.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Suppressed {
    pub id: Uuid,
    pub participant_id: String,
    /// As requested (a UUID in text form for email).
    pub template_id: String,
    pub created_at: DateTime<Utc>,
    /// A live (not suppressed, not duplicate) row exists for the same participant and template
    /// within `window` on either side.
    pub covered: bool,
}

/// The suppressed notifications of `channel` created in `[from, to)` (`to` none: up to now), oldest
/// first, locked (`for update`) so a concurrent writer cannot change them before the requeue.
pub async fn lock_suppressed(
    conn: &mut PgConnection,
    channel: &str,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    window: Duration,
) -> Result<Vec<Suppressed>, sqlx::Error> {
    sqlx::query_as(
        "select n.id, n.participant_id, n.template_id, n.created_at,
                exists (
                    select 1 from notifications p
                    where p.participant_id = n.participant_id and p.template_id = n.template_id
                      and p.channel = n.channel and p.id <> n.id
                      and p.status not in ('suppressed', 'duplicate')
                      and p.created_at > n.created_at - $4 and p.created_at < n.created_at + $4
                ) as covered
         from notifications n
         where n.status = 'suppressed' and n.channel = $1 and n.created_at >= $2
           and ($3::timestamptz is null or n.created_at < $3)
         order by n.created_at, n.id
         for update of n",
    )
    .bind(channel)
    .bind(from)
    .bind(to)
    .bind(window)
    .fetch_all(conn)
    .await
}
