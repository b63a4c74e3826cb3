-- Delivery status (SPEC §7), resends of retryable temporary failures, click tracking (SPEC §8), and the
-- indexes the rollout report and the retention job need (SPEC §9).

-- Times VA Notify accepted this notification (201). A resend after a `Retryable` temporary failure is a
-- new send of the same row, bounded by `callbacks.max_sends`.
alter table notifications add column sends integer not null default 0;
-- VA Notify calls made before the current send began: the worker's retry budget
-- (`worker.max_attempts`) applies per send, while `attempts` keeps numbering notification_attempts rows.
alter table notifications add column attempts_before_send integer not null default 0;

-- Retention deletes old rows in batches; a duplicate must not pin the row it repeated.
alter table notifications drop constraint notifications_duplicate_of_fkey;
alter table notifications add constraint notifications_duplicate_of_fkey
    foreign key (duplicate_of) references notifications (id) on delete set null;

-- The rollout report aggregates a feature's notifications per stage (a created_at range), and
-- retention deletes by age: both walk this index instead of the whole table. (Not (channel, created_at):
-- with one channel it is the same index, and every index costs the accept path an insert.)
create index notifications_created on notifications (created_at);

-- Delivery-status callbacks as received. The recipient address (`to`) is never stored.
create table notification_events (
    id               bigserial   primary key,
    notification_id  uuid        not null references notifications (id) on delete cascade,
    -- VA Notify's id of the send this callback reports on.
    va_notify_id     uuid,
    status           text        not null,
    status_reason    text,
    -- VA Notify's own times for the send.
    created_at       timestamptz,
    completed_at     timestamptz,
    sent_at          timestamptz,
    notification_type text,
    provider         text,
    -- What the callback did: moved | resend | dead | recorded (no state change: stale or in-flight).
    effect           text        not null,
    received_at      timestamptz not null default now()
);
create index notification_events_notification on notification_events (notification_id, received_at);
create index notification_events_received on notification_events (received_at);

-- Clicks through the tracker, one row per notification.
create table clicks (
    notification_id  uuid        primary key references notifications (id) on delete cascade,
    first_at         timestamptz not null default now(),
    last_at          timestamptz not null default now(),
    -- Every request through the link, HEAD and link scanners included.
    total            integer     not null default 0,
    -- GET requests from user agents that are not known link scanners: a person clicked when > 0.
    counted          integer     not null default 0,
    first_counted_at timestamptz
);
create index clicks_last_at on clicks (last_at);
