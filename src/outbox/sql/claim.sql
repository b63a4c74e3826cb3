-- Leases up to $1 due rows of the channels $5 for $2 (see `outbox::claim`). `status in (...)` spells lifecycle::PENDING
-- literally, as the partial index `notifications_due_by_channel` does (a unit test pins both).
with live_owners as materialized (
    select l.objid::int8 as owner from pg_locks l
    where l.locktype = 'advisory' and l.classid = $4::int4::oid and l.objsubid = 2 and l.granted
      and l.database = (select oid from pg_database where datname = current_database())
), orphaned as (
    select id, next_attempt_at from notifications
    where status = 'sending' and lease_owner is not null and next_attempt_at > now()
      and lease_owner is distinct from $3::int4
      and lease_owner::int8 not in (select owner from live_owners)
      and channel = any($5::text[])
    limit $1
    for update skip locked
), due as (
    -- Each channel's own ordered scan of `notifications_due_by_channel`, so a shut lane's backlog (a channel
    -- left out of $5) is never stepped over. Each may lock up to $1 rows; those not picked are let go when the
    -- statement ends, so another replica's claim skips them only for that moment.
    select d.id, d.next_attempt_at
    from unnest($5::text[]) as c(channel)
    cross join lateral (
        select id, next_attempt_at from notifications
        where channel = c.channel and status in ('queued', 'retry_wait', 'sending') and next_attempt_at <= now()
        order by next_attempt_at
        limit $1
        for update skip locked
    ) d
), picked as (
    select id from (select id, 0 as first, next_attempt_at from orphaned
                    union all select id, 1, next_attempt_at from due) p
    order by first, next_attempt_at
    limit $1
), claimed as (
    update notifications n
    set status = 'sending', lease_token = gen_random_uuid(), lease_owner = $3, attempts = n.attempts + 1,
        next_attempt_at = now() + $2::interval, updated_at = now()
    from picked where n.id = picked.id
    returning n.id, n.channel, n.participant_id, n.template_id, n.attempts, n.lease_token, n.sends, n.attempts_before_send
), in_flight as (
    insert into notification_attempts (notification_id, attempt) select id, attempts from claimed
)
select c.id as "id!", c.channel as "channel!", c.participant_id as "participant_id!", c.template_id as "template_id!",
       c.attempts as "attempts!", c.lease_token as "lease_token!", c.sends as "sends!",
       c.attempts_before_send as "attempts_before_send!",
       (select max(a.started_at) from notification_attempts a
        where a.notification_id = c.id and a.attempt > c.attempts_before_send and a.attempt < c.attempts
          and (a.outcome = 'in_flight' or (a.outcome = 'retryable' and a.error_class in ('timeout', 'transport'))))
           as "in_doubt_since?"
from claimed c
