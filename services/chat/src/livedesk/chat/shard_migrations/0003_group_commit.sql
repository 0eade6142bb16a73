-- chat_append_messages: a group commit of message appends (livedesk.chat.group_commit).
--
-- Element i of the arrays is one message, the parameters of the one-message
-- statement; the result's element i is its seq, or NULL when it was not
-- written here: the conversation refused it (resolved, another tenant's, the
-- guard failed) or its client_msg_id is already stored (a retry). The caller
-- sends those on their own, which answers exactly as for a single send.
--
-- Why a function and not one statement over unnest(): its statements are the
-- one-message statement's, each an index lookup whose plan PL/pgSQL prepares
-- once and keeps; a join over arrays was re-planned on every call and, with a
-- cached generic plan from when the tables were small, scanned them whole.
-- Rows are locked in the order given: the caller sorts by conversation id, so
-- two batches (two pods) never wait for each other in a cycle.
CREATE OR REPLACE FUNCTION chat_append_messages(
    conversation_ids uuid[], tenant_ids uuid[], sender_ids uuid[], guards text[],
    message_ids uuid[], sender_kinds text[], bodies text[], client_msg_ids text[],
    created_ats timestamptz[], event_ids uuid[], prefixes bytea[]
) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    seqs bigint[] := array_fill(NULL::bigint, ARRAY[cardinality(conversation_ids)]);
    i integer := 0;
    m record;
    next_seq bigint;
BEGIN
    -- A row at a time from unnest: subscripting arrays of text in a loop would
    -- walk them from the start on every access.
    FOR m IN SELECT * FROM unnest(conversation_ids, tenant_ids, sender_ids, guards,
                                  message_ids, sender_kinds, bodies, client_msg_ids,
                                  created_ats, event_ids, prefixes)
                 AS t(conversation_id, tenant_id, sender_id, guard, id, sender_kind, body,
                      client_msg_id, created_at, event_id, prefix)
    LOOP
        i := i + 1;
        CONTINUE WHEN m.client_msg_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM messages
            WHERE conversation_id = m.conversation_id AND sender_id = m.sender_id
              AND client_msg_id = m.client_msg_id);
        UPDATE conversations SET last_seq = last_seq + 1, updated_at = m.created_at
        WHERE id = m.conversation_id AND tenant_id = m.tenant_id AND status <> 'resolved'
          AND CASE m.guard WHEN 'visitor' THEN visitor_id = m.sender_id
                           WHEN 'agent' THEN agent_id = m.sender_id
                           ELSE true END
        RETURNING last_seq INTO next_seq;
        CONTINUE WHEN NOT FOUND;
        INSERT INTO messages (conversation_id, seq, id, tenant_id, sender_kind, sender_id,
                              body, client_msg_id, created_at)
        VALUES (m.conversation_id, next_seq, m.id, m.tenant_id, m.sender_kind, m.sender_id,
                m.body, m.client_msg_id, m.created_at);
        INSERT INTO outbox (event_id, routing_key, body)
        VALUES (m.event_id, 'message.created', chat_with_seq(m.prefix, next_seq));
        seqs[i] := next_seq;
    END LOOP;
    RETURN seqs;
END
$$;
