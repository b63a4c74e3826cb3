-- Every channel EBG calls (issue 11, CHANNELS.md §1): one row per channel of a request.
--
-- * `template_id` becomes text: push template ids are VEText ids (strings, not UUIDs). Email and SMS
--   rows keep their UUID in its canonical text form (uuid::text), so every existing comparison reads the
--   same; one column keeps the duplicate-window index (participant_id, template_id, created_at) valid for
--   every channel. The rewrite happens once, at this migration.
-- * `sent_template_id`: the template actually sent when it differs from the requested one (the
--   universal-link swap, CHANNELS.md §6); null means "as requested".
-- * `request_id`: the rows one request created (send_notifications creates up to three). One
--   Idempotency-Key covers the whole request, so the key is unique per (key, channel), and a replay
--   answers with the first request's row of every channel.
-- The status constraint and the partial index of pending rows are unchanged.

alter table notifications alter column template_id type text using template_id::text;
alter table notifications add column sent_template_id text;
alter table notifications add column request_id uuid;

drop index notifications_idempotency_key;
create unique index notifications_idempotency_key on notifications (idempotency_key, channel)
    where idempotency_key is not null;

-- The old signature compared a uuid parameter with the column; it cannot run any more.
drop function accept_notification(uuid, text, text, uuid, text, boolean, interval);

-- One channel of one request. `p_request_channels` are all the channels of the request (sorted), so a
-- replay can tell "the same request again" from "this key was used for another request".
create function accept_notification(
    p_id               uuid,
    p_request_id       uuid,
    p_channel          text,
    p_participant_id   text,
    p_template_id      text,
    p_idempotency_key  text,
    p_request_channels text[],
    p_enabled          boolean,
    p_duplicate_window interval
) returns table (id uuid, status text, replayed boolean, key_conflict boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    existing notifications%rowtype;
    earlier  text[];
    prior    uuid;
    v_status text := case when p_enabled then 'queued' else 'suppressed' end;
    v_reason text := case when p_enabled then null else 'toggle_disabled' end;
begin
    if p_idempotency_key is not null then
        -- Serialises requests with this key across all their channels: the first one records every
        -- channel before a concurrent one looks (each statement below sees what committed before it).
        perform pg_advisory_xact_lock(hashtextextended('key/' || p_idempotency_key, 0));
        select array_agg(n.channel order by n.channel) into earlier
        from notifications n
        where n.idempotency_key = p_idempotency_key and n.request_id is distinct from p_request_id;
        if earlier is null then
            insert into notifications
                (id, request_id, channel, participant_id, template_id, status, status_reason, idempotency_key,
                 next_attempt_at)
            values
                (p_id, p_request_id, p_channel, p_participant_id, p_template_id, v_status, v_reason,
                 p_idempotency_key, case when p_enabled then now() end);
            return query select p_id, v_status, false, false;
            return;
        end if;
        select * into existing from notifications n
        where n.idempotency_key = p_idempotency_key and n.channel = p_channel;
        if not found or earlier <> p_request_channels then
            return query select coalesce(existing.id, p_id), coalesce(existing.status, v_status), true, true;
            return;
        end if;
        return query select existing.id, existing.status, true,
            existing.participant_id <> p_participant_id or existing.template_id <> p_template_id;
        return;
    end if;

    if p_duplicate_window > interval '0' then
        -- Serialises concurrent requests for the same (channel, participant, template) so exactly one wins.
        perform pg_advisory_xact_lock(hashtextextended(p_channel || '/' || p_participant_id || '/' || p_template_id, 0));
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
        insert into notifications
            (id, request_id, channel, participant_id, template_id, status, status_reason, duplicate_of)
        values
            (p_id, p_request_id, p_channel, p_participant_id, p_template_id, 'duplicate',
             'duplicate_within_window', prior);
        return query select p_id, 'duplicate'::text, false, false;
        return;
    end if;

    insert into notifications
        (id, request_id, channel, participant_id, template_id, status, status_reason, next_attempt_at)
    values
        (p_id, p_request_id, p_channel, p_participant_id, p_template_id, v_status, v_reason,
         case when p_enabled then now() end);
    return query select p_id, v_status, false, false;
end $$;
