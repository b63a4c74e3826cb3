-- Writes try outcomes, fenced by lease tokens and by the lifecycle (see `outbox::finish_try`): only a
-- row still `sending` under the same lease moves. The in-doubt predicate is `outbox::IN_DOUBT_ATTEMPT`
-- (a unit test pins it).
with input as (
    select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::uuid[],
                         $7::int4[], $8::int4[], $9::text[], $10::int4[], $11::text[], $12::uuid[],
                         $13::text[], $14::uuid[])
        as i(id, lease_token, status, reason, next_attempt_at, va_notify_id, attempts_delta, attempt,
             outcome, http_status, error_class, call_va_notify_id, prior_outcome, prior_va_notify_id)
), moved as (
    update notifications n set
        status = case when i.status = 'defer'
                      then (case when n.attempts > 1 then 'retry_wait' else 'queued' end) else i.status end,
        status_reason = i.reason,
        next_attempt_at = i.next_attempt_at,
        va_notify_id = coalesce(i.va_notify_id, n.va_notify_id),
        sent_at = case when i.status = 'sent' then now() else n.sent_at end,
        sends = n.sends + (case when i.status = 'sent' then 1 else 0 end),
        attempts = n.attempts + i.attempts_delta,
        lease_token = null,
        lease_owner = null,
        updated_at = now()
    from input i
    where n.id = i.id and n.lease_token = i.lease_token and n.status = any($15::text[])
    returning n.id
), resolved as (
    update notification_attempts a set outcome = i.prior_outcome, finished_at = coalesce(a.finished_at, now()),
        va_notify_id = coalesce(i.prior_va_notify_id, a.va_notify_id)
    from input i
    where a.notification_id = i.id and a.attempt < i.attempt and i.prior_outcome is not null
      and i.id in (select id from moved)
      and (a.outcome = 'in_flight' or (a.outcome = 'retryable' and a.error_class in ('timeout', 'transport')))
), recorded as (
    update notification_attempts a set finished_at = now(), outcome = i.outcome, http_status = i.http_status,
        error_class = i.error_class, va_notify_id = i.call_va_notify_id
    from input i
    where a.notification_id = i.id and a.attempt = i.attempt and i.outcome is not null
      and i.id in (select id from moved)
), removed as (
    delete from notification_attempts a using input i
    where a.notification_id = i.id and a.attempt = i.attempt and i.outcome is null
      and i.id in (select id from moved)
)
select id as "id!" from moved
