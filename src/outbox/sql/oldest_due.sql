-- Age of the oldest due row: the oldest of each channel's ($1, every channel), each the first entry of its part of
-- the partial index `notifications_due_by_channel` (the literal list is lifecycle::PENDING).
select extract(epoch from now() - min(o.next_attempt_at))::float8
from unnest($1::text[]) as c(channel)
cross join lateral (
    select min(next_attempt_at) as next_attempt_at from notifications
    where channel = c.channel and status in ('queued', 'retry_wait', 'sending') and next_attempt_at <= now()
) o
