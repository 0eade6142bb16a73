-- Every event the bus carried, one row each, as it arrived.
--
-- At-least-once delivery means an event can arrive twice (a redelivery, a
-- replay). Rows with the same (tenant_id, type, event_id) collapse into one
-- when parts merge, keeping the latest ingested_at; queries that must not
-- double-count read with FINAL (or GROUP BY event_id).
CREATE TABLE IF NOT EXISTS events{local} {on_cluster}
(
    event_id        UUID,
    type            LowCardinality(String),
    tenant_id       String,
    conversation_id String,
    producer        LowCardinality(String),
    occurred_at     DateTime64(3, 'UTC'),
    trace_id        String,
    -- The typed payload as JSON, protobuf field names as in proto/.
    payload         String,
    ingested_at     DateTime64(3, 'UTC')
)
ENGINE = {replicated}ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, type, event_id);

-- cluster only
-- On a cluster, `events` is the Distributed table over every shard's
-- events_local; a conversation's events all live on one shard.
CREATE TABLE IF NOT EXISTS events {on_cluster} AS events_local
ENGINE = Distributed({cluster}, currentDatabase(), events_local, cityHash64(tenant_id, conversation_id));
