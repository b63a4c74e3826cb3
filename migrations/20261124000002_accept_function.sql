-- The accept step as one statement: idempotency, the duplicate window and the insert happen in one
-- round trip and one transaction. Several requests can be accepted in one commit by calling it once
-- per row inside a single statement.
create function accept_notification(
    p_id               uuid,
    p_channel          text,
    p_participant_id   text,
    p_template_id      uuid,
    p_idempotency_key  text,
    p_enabled          boolean,
    p_duplicate_window interval
) returns table (id uuid, status text, replayed boolean, key_conflict boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    existing notifications%rowtype;
    prior    uuid;
    v_status text := case when p_enabled then 'queued' else 'suppressed' end;
    v_reason text := case when p_enabled then null else 'toggle_disabled' end;
begin
    if p_idempotency_key is not null then
        insert into notifications as n
            (id, channel, participant_id, template_id, status, status_reason, idempotency_key, next_attempt_at)
        values
            (p_id, p_channel, p_participant_id, p_template_id, v_status, v_reason, p_idempotency_key,
             case when p_enabled then now() end)
        on conflict (idempotency_key) where idempotency_key is not null do nothing;
        if found then
            return query select p_id, v_status, false, false;
            return;
        end if;
        -- A concurrent insert with the same key waited for us above, so the winner is committed now.
        select * into existing from notifications n where n.idempotency_key = p_idempotency_key;
        return query select existing.id, existing.status, true,
            existing.participant_id <> p_participant_id
            or existing.template_id <> p_template_id
            or existing.channel <> p_channel;
        return;
    end if;

    if p_duplicate_window > interval '0' then
        -- Serialises concurrent requests for the same (participant, template) so exactly one wins.
        perform pg_advisory_xact_lock(hashtextextended(p_channel || '/' || p_participant_id || '/' || p_template_id::text, 0));
        select n.id into prior
        from notifications n
        where n.participant_id = p_participant_id
          and n.template_id = p_template_id
          and n.channel = p_channel
          and n.created_at > now() - p_duplicate_window
          and n.status <> 'duplicate'
        order by n.created_at
        limit 1;
    end if;

    if prior is not null then
        insert into notifications (id, channel, participant_id, template_id, status, status_reason, duplicate_of)
        values (p_id, p_channel, p_participant_id, p_template_id, 'duplicate', 'duplicate_within_window', prior);
        return query select p_id, 'duplicate'::text, false, false;
        return;
    end if;

    insert into notifications (id, channel, participant_id, template_id, status, status_reason, next_attempt_at)
    values (p_id, p_channel, p_participant_id, p_template_id, v_status, v_reason, case when p_enabled then now() end);
    return query select p_id, v_status, false, false;
end $$;
