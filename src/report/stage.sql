-- One stage's numbers (see `report::stage_counts`): a range scan of `notifications_created`, one probe
-- of `clicks` per row. The status lists are the lifecycle's groups (a unit test pins them).
-- $4: the channel has delivery receipts (email, SMS): without them (push) `delivered` is null and an
-- accepted send is already its final outcome. $5: the channel's messages carry the tracked link (email,
-- SMS): without it (push) `unique_clicks` is null.
select
    count(*) as "requests!",
    count(*) filter (where n.status = 'suppressed') as "suppressed!",
    count(*) filter (where n.status = 'duplicate') as "duplicates!",
    count(distinct n.participant_id) filter (where n.status not in ('suppressed', 'duplicate'))
        as "unique_participants!",
    count(*) filter (where n.sends > 0
        or n.status in ('delivered', 'failed', 'dead', 'permanent_failure', 'temporary_failure')) as "attempted!",
    count(*) filter (where n.sends > 0 or n.status = 'delivered') as "sent!",
    case when $4::bool then count(*) filter (where n.status = 'delivered') end as "delivered",
    count(*) filter (where n.status in ('failed', 'dead', 'permanent_failure', 'temporary_failure')) as "failed!",
    count(*) filter (where n.status in ('delivered', 'failed', 'dead', 'permanent_failure', 'temporary_failure') or (not $4::bool and n.status = 'sent')) as "settled!",
    count(*) filter (where n.status = 'skipped') as "skipped!",
    count(*) filter (where n.status in ('queued', 'sending', 'retry_wait')) as "pending!",
    case when $5::bool then count(*) filter (where c.counted > 0) end as "unique_clicks"
from notifications n
left join clicks c on c.notification_id = n.id
where n.channel = $1 and n.created_at >= $2 and n.created_at < $3
