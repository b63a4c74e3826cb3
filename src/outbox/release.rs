//! The statements behind a release of suppressed mail ([`crate::toggles::release`]): the candidates of a
//! range (read without locks, for a release that must resolve ICNs first), and the candidates locked until
//! the caller's transaction requeues some of them (see [`super::requeue()`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// A suppressed notification that a release may queue.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Suppressed {
    pub id: Uuid,
    pub participant_id: String,
    /// As requested (a UUID in text form for email and SMS, a VEText id for push).
    pub template_id: String,
    pub created_at: DateTime<Utc>,
    /// A live (not suppressed, not duplicate) row exists for the same channel, participant and template
    /// within `window` on either side.
    pub covered: bool,
}

/// A suppressed notification as read before the release's transaction: who it is for.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Candidate {
    pub id: Uuid,
    pub participant_id: String,
}

/// The suppressed notifications of `channel` created in `[from, to)` (`to` none: up to now), unlocked:
/// a release that must ask MPI who they are for reads them first and locks them ([`lock_suppressed`]
/// with their ids) only once it knows, so no row lock is held across MPI calls.
pub async fn suppressed_candidates<'e>(
    executor: impl PgExecutor<'e>,
    channel: &str,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<Candidate>, sqlx::Error> {
    sqlx::query_as!(
        Candidate,
        r#"select id, participant_id from notifications
         where status = 'suppressed' and channel = $1 and created_at >= $2
           and ($3::timestamptz is null or created_at < $3)
         order by created_at, id"#,
        channel,
        from,
        to,
    )
    .fetch_all(executor)
    .await
}

/// The suppressed notifications of `channel` created in `[from, to)` (`to` none: up to now), oldest
/// first, locked (`for update`) so a concurrent writer cannot change them before the requeue. With
/// `only`, just those ids among them: rows that stopped being `suppressed` since they were read are
/// left out, and rows suppressed since are not this release's.
pub async fn lock_suppressed(
    conn: &mut PgConnection,
    channel: &str,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    only: Option<&[Uuid]>,
    window: Duration,
) -> Result<Vec<Suppressed>, sqlx::Error> {
    sqlx::query_as!(
        Suppressed,
        r#"select n.id, n.participant_id, n.template_id, n.created_at,
                exists (
                    select 1 from notifications p
                    where p.participant_id = n.participant_id and p.template_id = n.template_id
                      and p.channel = n.channel and p.id <> n.id
                      and p.status not in ('suppressed', 'duplicate')
                      and p.created_at > n.created_at - $4::interval and p.created_at < n.created_at + $4::interval
                ) as "covered!"
         from notifications n
         where n.status = 'suppressed' and n.channel = $1 and n.created_at >= $2
           and ($3::timestamptz is null or n.created_at < $3)
           and ($5::uuid[] is null or n.id = any($5))
         order by n.created_at, n.id
         for update of n"#,
        channel,
        from,
        to,
        super::pg_interval(window),
        only,
    )
    .fetch_all(conn)
    .await
}
