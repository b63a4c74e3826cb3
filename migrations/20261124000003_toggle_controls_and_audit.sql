-- Beyond Flipper (SPEC §4.4): a kill switch that leaves the gates alone, and an append-only audit log.

-- One row per paused (or once-paused) feature. Pausing turns the feature off for everyone while its
-- flipper_gates rows stay as they are, so resuming restores the exact rollout stage.
create table feature_controls (
    feature_key  varchar(255) primary key,
    paused       boolean      not null default false,
    reason       text,
    changed_by   text,
    changed_at   timestamptz  not null default now()
);

create trigger feature_controls_changed after insert or update or delete or truncate on feature_controls
    for each statement execute function notify_toggles_changed();

-- Every change to a feature: through the Flipper API, the admin routes, the CLI or the rollout
-- automation. `before`/`after` are gate snapshots:
--   {"boolean": bool, "actors": [ids], "percentage_of_actors": number, "percentage_of_time": number, "paused": bool}
-- The rollout report derives its stages (periods of constant settings) from consecutive `after` values.
create table feature_audit (
    id           bigserial    primary key,
    at           timestamptz  not null default now(),
    feature_key  varchar(255) not null,
    -- e.g. add_feature, remove_feature, clear, enable, disable, pause, resume, release_suppressed
    operation    text         not null,
    -- boolean | actors | percentage_of_actors | percentage_of_time | null
    gate         text,
    value        text,
    before       jsonb        not null,
    after        jsonb        not null,
    -- admin token name, OS user (CLI), or `rollout` (automation)
    actor        text         not null,
    reason       text,
    request_id   text
);
create index feature_audit_feature_at on feature_audit (feature_key, at desc, id desc);

-- Append-only: the log cannot be edited or trimmed through the application role by mistake.
create function feature_audit_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'feature_audit is append-only';
end $$;
create trigger feature_audit_no_update before update or delete on feature_audit
    for each row execute function feature_audit_append_only();
