-- Erasure (GDPR right to erasure, chat's visitor.erased) and tenant retention
-- (conversation.purged): the record of what was deleted, so that events of an
-- erased conversation still in flight when the erasure ran (chat's outbox may
-- publish them after visitor.erased) are dropped on arrival instead of stored.
-- erasure.py deletes the rows themselves from every table holding
-- conversation data; these tables hold only ids, never content.
--
-- A repeated erasure (a redelivery, chat's retried request) writes the same
-- keys again; they collapse.

CREATE TABLE IF NOT EXISTS erased_conversations{local} {on_cluster}
(
    tenant_id       String,
    conversation_id String,
    -- visitor.erased or conversation.purged
    reason          LowCardinality(String),
    -- The event that erased it.
    event_id        UUID,
    erased_at       DateTime64(3, 'UTC')
)
ENGINE = {replicated}ReplacingMergeTree
ORDER BY (tenant_id, conversation_id);

-- cluster only
CREATE TABLE IF NOT EXISTS erased_conversations {on_cluster} AS erased_conversations_local
ENGINE = Distributed({cluster}, currentDatabase(), erased_conversations_local, cityHash64(tenant_id, conversation_id));

-- Erased visitors: a conversation.created of theirs arriving later (a
-- conversation chat's list did not name) erases that conversation too.
CREATE TABLE IF NOT EXISTS erased_visitors{local} {on_cluster}
(
    tenant_id  String,
    visitor_id String,
    event_id   UUID,
    erased_at  DateTime64(3, 'UTC')
)
ENGINE = {replicated}ReplacingMergeTree
ORDER BY (tenant_id, visitor_id);

-- cluster only
CREATE TABLE IF NOT EXISTS erased_visitors {on_cluster} AS erased_visitors_local
ENGINE = Distributed({cluster}, currentDatabase(), erased_visitors_local, cityHash64(tenant_id, visitor_id));
