-- Guarded rollout (SPEC §9): a release plan as data, executed by the service's evaluator.

-- One plan per rollout of one feature. `stages` is the ordered list
--   [{"percentage": 2, "min_dwell_seconds": 14400, "min_sends": 100}, ...]
-- and `current_stage` indexes it (0-based). Decisions are judged on the notifications requested since
-- `stage_started_at`, with the rollout report's definitions.
create table rollout_plans (
    id                uuid         primary key,
    feature_key       varchar(255) not null,
    stages            jsonb        not null,
    -- A stage fails (and the feature is paused) when its error rate reaches this fraction.
    max_error_rate    double precision not null default 0.05,
    -- Optional: a stage's click-through rate must be at least this fraction of the previous stage's.
    min_ctr_ratio     double precision,
    -- `auto` changes the gates; `advise` only records what it would do.
    mode              text         not null check (mode in ('advise', 'auto')),
    state             text         not null check (state in
                          ('pending', 'running', 'paused', 'halted', 'completed', 'interrupted', 'aborted')),
    current_stage     integer      not null default 0,
    stage_started_at  timestamptz,
    -- Click-through rate of the previous stage when it was left (for min_ctr_ratio).
    previous_ctr      double precision,
    -- The newest feature_audit row this plan wrote (or the newest row when it was created). A later row
    -- that changed the gates was written by someone else: an operator took over (state `interrupted`).
    last_audit_id     bigint       not null default 0,
    -- The last decision recorded, so repeated holds are counted but logged once.
    last_decision     text,
    last_reason       text,
    -- The numbers of the latest evaluation, whether or not it was logged.
    last_evaluation   jsonb,
    last_evaluated_at timestamptz,
    created_by        text         not null,
    created_at        timestamptz  not null default now(),
    updated_at        timestamptz  not null default now()
);

-- At most one plan per feature is live: two evaluators' plans would fight over the same gates.
create unique index rollout_plans_one_live on rollout_plans (feature_key)
    where state in ('pending', 'running', 'paused', 'halted');
create index rollout_plans_created on rollout_plans (created_at desc);

-- The plan's decision log: every decision the evaluator or an operator took, with its evidence
-- (the stage's numbers and the thresholds). The same decisions are in feature_audit as `rollout_*` rows.
create table rollout_decisions (
    id         bigserial   primary key,
    plan_id    uuid        not null references rollout_plans (id) on delete cascade,
    at         timestamptz not null,
    -- 0-based stage the decision was taken in.
    stage      integer     not null,
    -- start | advance | complete | pause | hold | halt | interrupted | resume | abort
    decision   text        not null,
    -- Why, as a fixed code (e.g. dwell_not_met, insufficient_sample, error_rate_exceeded).
    reason     text        not null,
    mode       text        not null,
    -- False for advice, and for decisions that change no gate.
    applied    boolean     not null,
    -- `rollout` for the evaluator, else the admin token name or `cli:<user>`.
    actor      text        not null,
    evidence   jsonb       not null
);
create index rollout_decisions_plan on rollout_decisions (plan_id, id);
