-- An accept whose COMMIT was sent but never acknowledged was answered 503: the caller was told
-- "not recorded" and retries. Once the database answers again, the writer withdraws such rows
-- where that is still safe, so the 503 becomes true after the fact:
--   * absent: the COMMIT never happened;
--   * withdrawn: deleted, nothing had used it yet;
--   * kept: it must stand — a worker already took it, a later request was recorded as its
--     duplicate, or it has an Idempotency-Key (a retry with that key may have been answered by it).
-- The (channel, participant, template) advisory lock is the one accept_notification takes, so a
-- retry recorded concurrently as a duplicate is seen here, never left pointing at a deleted row.
create function withdraw_unacknowledged(p_ids uuid[])
returns table (id uuid, resolution text)
language plpgsql as $$
#variable_conflict use_column
declare
    v_id uuid;
    candidate notifications%rowtype;
begin
    foreach v_id in array p_ids loop
        select * into candidate from notifications n where n.id = v_id;
        if not found then
            return query select v_id, 'absent'::text;
            continue;
        end if;
        if candidate.idempotency_key is not null then
            return query select v_id, 'kept'::text;
            continue;
        end if;
        perform pg_advisory_xact_lock(hashtextextended(
            candidate.channel || '/' || candidate.participant_id || '/' || candidate.template_id::text, 0));
        -- A worker claims with SKIP LOCKED: holding the row lock keeps it from taking it meanwhile.
        delete from notifications n
        where n.id = v_id
          and n.status in ('queued', 'suppressed')
          and n.attempts = 0
          and not exists (select 1 from notifications d where d.duplicate_of = v_id);
        if found then
            return query select v_id, 'withdrawn'::text;
        else
            return query select v_id, 'kept'::text;
        end if;
    end loop;
end $$;
