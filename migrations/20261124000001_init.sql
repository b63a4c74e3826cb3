-- ebg-notify core schema: the notification outbox, its attempts, and Flipper's tables.

-- One row per request received on a send_* route. The row is the queue entry too: workers claim due
-- rows with FOR UPDATE SKIP LOCKED, so accepting and enqueueing are one insert in one transaction.
create table notifications (
    id               uuid primary key,
    channel          text        not null default 'email',
    participant_id   text        not null,
    template_id      uuid        not null,
    -- queued | sending | retry_wait | sent | delivered | temporary_failure | permanent_failure
    -- | failed | dead | skipped | suppressed | duplicate
    status           text        not null,
    status_reason    text,
    -- VA Notify calls made for this row (each has a notification_attempts row).
    attempts         integer     not null default 0,
    -- When a worker may (re)claim the row. For `sending` rows it is the lease expiry, so a crashed
    -- worker's rows become due again without a separate reaper. Null once nothing is left to do.
    next_attempt_at  timestamptz,
    -- Fencing token of the current lease; a worker only finishes a row whose token it still holds.
    lease_token      uuid,
    idempotency_key  text,
    -- For `duplicate` rows: the notification this one repeated.
    duplicate_of     uuid references notifications (id),
    va_notify_id     uuid,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    sent_at          timestamptz,
    delivered_at     timestamptz,
    constraint notifications_status_check check (status in (
        'queued', 'sending', 'retry_wait', 'sent', 'delivered', 'temporary_failure',
        'permanent_failure', 'failed', 'dead', 'skipped', 'suppressed', 'duplicate'))
);

create unique index notifications_idempotency_key on notifications (idempotency_key)
    where idempotency_key is not null;
-- The claim query walks this partial index only: it stays small however large the table grows.
create index notifications_due on notifications (next_attempt_at)
    where status in ('queued', 'retry_wait', 'sending');
-- Duplicate-window look-ups and per-participant history.
create index notifications_recent on notifications (participant_id, template_id, created_at);
create index notifications_va_notify_id on notifications (va_notify_id) where va_notify_id is not null;

-- One row per VA Notify call.
create table notification_attempts (
    notification_id  uuid        not null references notifications (id) on delete cascade,
    attempt          integer     not null,
    started_at       timestamptz not null default now(),
    finished_at      timestamptz,
    -- sent | retryable | final | daily_limit | circuit_open | in_flight (no answer recorded: crash)
    outcome          text        not null default 'in_flight',
    http_status      integer,
    error_class      text,
    va_notify_id     uuid,
    primary key (notification_id, attempt)
);

-- Flipper's ActiveRecord adapter tables, column for column, so rows copied from vets-api work as is.
create table flipper_features (
    id          bigserial primary key,
    key         varchar(255) not null,
    created_at  timestamp    not null default now(),
    updated_at  timestamp    not null default now()
);
create unique index index_flipper_features_on_key on flipper_features (key);

create table flipper_gates (
    id           bigserial primary key,
    feature_key  varchar(255) not null,
    key          varchar(255) not null,
    value        text,
    created_at   timestamp    not null default now(),
    updated_at   timestamp    not null default now()
);
create unique index index_flipper_gates_on_feature_key_and_key_and_value
    on flipper_gates (feature_key, key, value);

-- Any change to the toggle tables, by this service, the CLI or by hand, reaches every replica at once.
create function notify_toggles_changed() returns trigger language plpgsql as $$
begin
    perform pg_notify('ebg_toggles_changed', '');
    return null;
end $$;

create trigger flipper_features_changed after insert or update or delete or truncate on flipper_features
    for each statement execute function notify_toggles_changed();
create trigger flipper_gates_changed after insert or update or delete or truncate on flipper_gates
    for each statement execute function notify_toggles_changed();
