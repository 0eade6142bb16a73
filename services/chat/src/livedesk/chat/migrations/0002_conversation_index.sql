-- The per-tenant index of conversations on the directory database (issue 3).
--
-- Conversations live on their shard (see docs/sharding.md); this small table
-- answers the cross-shard listings (an agent's inbox, a tenant's open
-- conversations) without asking every shard. It is written after each shard
-- commit and repaired from each shard's conversation_index_queue, guarded by
-- the conversation's index_version, so it converges on the shard's state.
CREATE TABLE IF NOT EXISTS conversation_index (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    visitor_id  uuid        NOT NULL,
    status      text        NOT NULL,
    team_id     uuid,
    agent_id    uuid,
    version     bigint      NOT NULL DEFAULT 0,
    synced_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS conversation_index_tenant ON conversation_index (tenant_id, id DESC);
CREATE INDEX IF NOT EXISTS conversation_index_status
    ON conversation_index (tenant_id, status, id DESC);
CREATE INDEX IF NOT EXISTS conversation_index_agent
    ON conversation_index (tenant_id, agent_id, id DESC) WHERE agent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS conversation_index_visitor
    ON conversation_index (tenant_id, visitor_id, id DESC);
