-- Typed tables the reports and search read, filled from `events` by
-- materialized views (one INSERT into `events` fills them too).
--
-- Each is a ReplacingMergeTree whose sorting key holds the event's identity,
-- so a redelivered or replayed event collapses into the row it duplicates;
-- queries read them with FINAL. Partitions are months, sorting keys start
-- with tenant_id (every report is per tenant).
--
-- Placeholders ({local}, {on_cluster}, {replicated}, {cluster}) are filled by
-- schema.py: empty on one node; `_local`, ON CLUSTER and Replicated* engines
-- with CLICKHOUSE_CLUSTER set, plus the Distributed tables marked "cluster only".

-- Conversation lifecycle: created, queued, assigned, transferred, resolved, reopened.
CREATE TABLE IF NOT EXISTS conversation_events{local} {on_cluster}
(
    tenant_id         String,
    conversation_id   String,
    occurred_at       DateTime64(3, 'UTC'),
    event_id          UUID,
    type              LowCardinality(String),
    -- conversation.created
    inbox_id          String,
    -- team of created / queued / assigned, to_team_id of transferred
    team_id           String,
    -- agent of assigned / resolved, to_agent_id of transferred
    agent_id          String,
    previous_agent_id String,
    -- visitor / agent / system, for resolved, reopened and transferred
    actor_kind        LowCardinality(String)
)
ENGINE = {replicated}ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, conversation_id, occurred_at, event_id);

-- cluster only
CREATE TABLE IF NOT EXISTS conversation_events {on_cluster} AS conversation_events_local
ENGINE = Distributed({cluster}, currentDatabase(), conversation_events_local, cityHash64(tenant_id, conversation_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS conversation_events_mv{local} {on_cluster}
TO conversation_events{local} AS
SELECT
    tenant_id,
    conversation_id,
    occurred_at,
    event_id,
    type,
    JSONExtractString(payload, 'inbox_id') AS inbox_id,
    if(type = 'conversation.transferred',
       JSONExtractString(payload, 'to_team_id'),
       JSONExtractString(payload, 'team_id')) AS team_id,
    if(type = 'conversation.transferred',
       JSONExtractString(payload, 'to_agent_id'),
       JSONExtractString(payload, 'agent_id')) AS agent_id,
    if(type = 'conversation.transferred',
       JSONExtractString(payload, 'from_agent_id'),
       JSONExtractString(payload, 'previous_agent_id')) AS previous_agent_id,
    replaceOne(lower(JSONExtractString(payload, 'actor_kind')), 'actor_kind_', '') AS actor_kind
FROM events{local}
WHERE startsWith(type, 'conversation.');

-- Every chat message, for reply / first-response times and full-text search.
-- Search uses the text (inverted) index on lower(body): see docs/metrics.md.
CREATE TABLE IF NOT EXISTS messages{local} {on_cluster}
(
    tenant_id       String,
    conversation_id String,
    created_at      DateTime64(3, 'UTC'),
    message_id      String,
    event_id        UUID,
    seq             UInt64,
    sender_kind     LowCardinality(String),
    sender_id       String,
    body            String,
    INDEX body_text lowerUTF8(body) TYPE text(tokenizer = splitByNonAlpha)
)
ENGINE = {replicated}ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant_id, created_at, message_id);

-- cluster only
CREATE TABLE IF NOT EXISTS messages {on_cluster} AS messages_local
ENGINE = Distributed({cluster}, currentDatabase(), messages_local, cityHash64(tenant_id, conversation_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS messages_mv{local} {on_cluster}
TO messages{local} AS
SELECT
    tenant_id,
    conversation_id,
    if(JSONExtractString(payload, 'created_at') = '', occurred_at,
       parseDateTime64BestEffortOrZero(JSONExtractString(payload, 'created_at'), 3, 'UTC')) AS created_at,
    if(JSONExtractString(payload, 'message_id') = '', toString(event_id),
       JSONExtractString(payload, 'message_id')) AS message_id,
    event_id,
    toUInt64OrZero(JSONExtractString(payload, 'seq')) AS seq,
    replaceOne(lower(JSONExtractString(payload, 'sender_kind')), 'actor_kind_', '') AS sender_kind,
    JSONExtractString(payload, 'sender_id') AS sender_id,
    JSONExtractString(payload, 'body') AS body
FROM events{local}
WHERE type = 'message.created';

-- CSAT ratings.
CREATE TABLE IF NOT EXISTS csat{local} {on_cluster}
(
    tenant_id       String,
    conversation_id String,
    occurred_at     DateTime64(3, 'UTC'),
    event_id        UUID,
    rating          UInt8,
    agent_id        String,
    comment         String
)
ENGINE = {replicated}ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, conversation_id, occurred_at, event_id);

-- cluster only
CREATE TABLE IF NOT EXISTS csat {on_cluster} AS csat_local
ENGINE = Distributed({cluster}, currentDatabase(), csat_local, cityHash64(tenant_id, conversation_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS csat_mv{local} {on_cluster}
TO csat{local} AS
SELECT
    tenant_id,
    conversation_id,
    occurred_at,
    event_id,
    toUInt8(least(JSONExtractUInt(payload, 'rating'), 255)) AS rating,
    JSONExtractString(payload, 'agent_id') AS agent_id,
    JSONExtractString(payload, 'comment') AS comment
FROM events{local}
WHERE type = 'csat.submitted';

-- Agent availability, for the live view.
CREATE TABLE IF NOT EXISTS agent_status{local} {on_cluster}
(
    tenant_id   String,
    agent_id    String,
    occurred_at DateTime64(3, 'UTC'),
    event_id    UUID,
    status      LowCardinality(String)
)
ENGINE = {replicated}ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, agent_id, occurred_at, event_id);

-- cluster only
CREATE TABLE IF NOT EXISTS agent_status {on_cluster} AS agent_status_local
ENGINE = Distributed({cluster}, currentDatabase(), agent_status_local, cityHash64(tenant_id, agent_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS agent_status_mv{local} {on_cluster}
TO agent_status{local} AS
SELECT
    tenant_id,
    JSONExtractString(payload, 'agent_id') AS agent_id,
    occurred_at,
    event_id,
    replaceOne(lower(JSONExtractString(payload, 'status')), 'agent_status_', '') AS status
FROM events{local}
WHERE type = 'agent.status_changed';

-- Events stored before this migration: copied once (re-running is harmless,
-- the copies collapse like any duplicate).
INSERT INTO conversation_events
SELECT tenant_id, conversation_id, occurred_at, event_id, type,
    JSONExtractString(payload, 'inbox_id'),
    if(type = 'conversation.transferred', JSONExtractString(payload, 'to_team_id'), JSONExtractString(payload, 'team_id')),
    if(type = 'conversation.transferred', JSONExtractString(payload, 'to_agent_id'), JSONExtractString(payload, 'agent_id')),
    if(type = 'conversation.transferred', JSONExtractString(payload, 'from_agent_id'), JSONExtractString(payload, 'previous_agent_id')),
    replaceOne(lower(JSONExtractString(payload, 'actor_kind')), 'actor_kind_', '')
FROM events FINAL WHERE startsWith(type, 'conversation.');

INSERT INTO messages
SELECT tenant_id, conversation_id,
    if(JSONExtractString(payload, 'created_at') = '', occurred_at,
       parseDateTime64BestEffortOrZero(JSONExtractString(payload, 'created_at'), 3, 'UTC')),
    if(JSONExtractString(payload, 'message_id') = '', toString(event_id), JSONExtractString(payload, 'message_id')),
    event_id,
    toUInt64OrZero(JSONExtractString(payload, 'seq')),
    replaceOne(lower(JSONExtractString(payload, 'sender_kind')), 'actor_kind_', ''),
    JSONExtractString(payload, 'sender_id'),
    JSONExtractString(payload, 'body')
FROM events FINAL WHERE type = 'message.created';

INSERT INTO csat
SELECT tenant_id, conversation_id, occurred_at, event_id,
    toUInt8(least(JSONExtractUInt(payload, 'rating'), 255)),
    JSONExtractString(payload, 'agent_id'), JSONExtractString(payload, 'comment')
FROM events FINAL WHERE type = 'csat.submitted';

INSERT INTO agent_status
SELECT tenant_id, JSONExtractString(payload, 'agent_id'), occurred_at, event_id,
    replaceOne(lower(JSONExtractString(payload, 'status')), 'agent_status_', '')
FROM events FINAL WHERE type = 'agent.status_changed';
