-- Per-conversation summaries: the reports read one small row per conversation
-- instead of re-deriving every metric from raw messages at query time.
--
-- Two tables:
--
-- * conversation_state: every fact of a conversation the metrics need, as
--   sets (groupUniqArray) and min/max tuples, filled by materialized views
--   from conversation_events, messages and csat. Sets and min/max do not care
--   about arrival order and absorb duplicates, so merging the rows of one
--   conversation always gives the same state, however the events arrived.
--   Sorted by conversation (not partitioned by month: a conversation's facts
--   must merge into one row whatever month they happened in), small granules
--   so the ingester can look up the conversations of one batch cheaply.
-- * conversation_summary: the metric inputs of each conversation (episodes
--   with their first assignment and first agent message, resolves, ratings,
--   reply pairs, live waiting state), computed from the merged state by the
--   view conversation_summary_source. The ingester re-computes the
--   conversations of each batch after inserting it and before acking
--   (ingest.py); the newest computation (version = when it read the state)
--   wins. Partitioned by creation month, sorted by tenant then creation time,
--   with min/max indexes on the span of the times the reports filter on.
--
-- Only conversations whose conversation.created is stored get a summary
-- (docs/metrics.md: a conversation appears in reports once it is).

CREATE TABLE IF NOT EXISTS conversation_state{local} {on_cluster}
(
    tenant_id       String,
    conversation_id String,
    -- (occurred_at, inbox_id) of conversation.created; year 2200 until it is stored.
    created         SimpleAggregateFunction(min, Tuple(DateTime64(3, 'UTC'), String)),
    -- (occurred_at, team_id) of the last lifecycle event with a team.
    team            SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    -- Every lifecycle event: (occurred_at, event_id, kind, agent_id). kind: 1 created,
    -- 2 reopened, 3 assigned, 4 resolved, 5 queued, 6 transferred to a team (no agent),
    -- 7 transferred to an agent, 0 any other conversation.* event.
    lifecycle       SimpleAggregateFunction(groupUniqArrayArray,
                        Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))),
    -- Every rating: (occurred_at, event_id, rating, agent_id).
    ratings         SimpleAggregateFunction(groupUniqArrayArray,
                        Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))),
    -- Agent and visitor messages: (seq, created_at, is_agent, agent's sender_id,
    -- cityHash64(message_id)); identity (created_at, message_id) as in `messages`.
    messages        SimpleAggregateFunction(groupUniqArrayArray,
                        Array(Tuple(UInt64, DateTime64(3, 'UTC'), UInt8, String, UInt64)))
)
ENGINE = {replicated}AggregatingMergeTree
ORDER BY (tenant_id, conversation_id)
SETTINGS index_granularity = 1024;

-- cluster only
CREATE TABLE IF NOT EXISTS conversation_state {on_cluster} AS conversation_state_local
ENGINE = Distributed({cluster}, currentDatabase(), conversation_state_local, cityHash64(tenant_id, conversation_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS conversation_state_lifecycle_mv{local} {on_cluster}
TO conversation_state{local} AS
SELECT
    tenant_id,
    conversation_id,
    min(if(type = 'conversation.created', (occurred_at, inbox_id),
           (toDateTime64('2200-01-01 00:00:00', 3, 'UTC'), ''))) AS created,
    max(if(team_id != '', (occurred_at, team_id), (toDateTime64(0, 3, 'UTC'), ''))) AS team,
    groupUniqArray((occurred_at, event_id,
        toUInt8(multiIf(type = 'conversation.created', 1, type = 'conversation.reopened', 2,
                        type = 'conversation.assigned', 3, type = 'conversation.resolved', 4,
                        type = 'conversation.queued', 5,
                        type = 'conversation.transferred' AND agent_id = '', 6,
                        type = 'conversation.transferred', 7, 0)),
        agent_id)) AS lifecycle,
    CAST([] AS Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))) AS ratings,
    CAST([] AS Array(Tuple(UInt64, DateTime64(3, 'UTC'), UInt8, String, UInt64))) AS messages
FROM conversation_events{local}
GROUP BY tenant_id, conversation_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS conversation_state_messages_mv{local} {on_cluster}
TO conversation_state{local} AS
SELECT
    tenant_id,
    conversation_id,
    (toDateTime64('2200-01-01 00:00:00', 3, 'UTC'), '') AS created,
    (toDateTime64(0, 3, 'UTC'), '') AS team,
    CAST([] AS Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))) AS lifecycle,
    CAST([] AS Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))) AS ratings,
    groupUniqArray((seq, created_at, toUInt8(sender_kind = 'agent'),
                    if(sender_kind = 'agent', sender_id, ''), cityHash64(message_id))) AS messages
FROM messages{local}
WHERE sender_kind IN ('agent', 'visitor')
GROUP BY tenant_id, conversation_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS conversation_state_csat_mv{local} {on_cluster}
TO conversation_state{local} AS
SELECT
    tenant_id,
    conversation_id,
    (toDateTime64('2200-01-01 00:00:00', 3, 'UTC'), '') AS created,
    (toDateTime64(0, 3, 'UTC'), '') AS team,
    CAST([] AS Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))) AS lifecycle,
    groupUniqArray((occurred_at, event_id, rating, agent_id)) AS ratings,
    CAST([] AS Array(Tuple(UInt64, DateTime64(3, 'UTC'), UInt8, String, UInt64))) AS messages
FROM csat{local}
GROUP BY tenant_id, conversation_id;

CREATE TABLE IF NOT EXISTS conversation_summary{local} {on_cluster}
(
    tenant_id       String,
    conversation_id String,
    created_at      DateTime64(3, 'UTC'),
    inbox_id        String,
    -- The last non-empty team of its lifecycle events.
    team_id         String,
    -- Every agent it was ever assigned to.
    agents          Array(String),
    -- The earliest and latest time any report counts this conversation at.
    first_at        DateTime64(3, 'UTC'),
    last_at         DateTime64(3, 'UTC'),
    -- One per episode: (start, first assignment at, its agent, first agent message at,
    -- its sender); 1970-01-01 when there is none before the next episode starts.
    episodes        Array(Tuple(DateTime64(3, 'UTC'), DateTime64(3, 'UTC'), String,
                                DateTime64(3, 'UTC'), String)),
    -- (occurred_at, agent_id), sorted.
    assigns         Array(Tuple(DateTime64(3, 'UTC'), String)),
    resolves        Array(Tuple(DateTime64(3, 'UTC'), String)),
    -- (occurred_at, rating, agent_id), sorted.
    ratings         Array(Tuple(DateTime64(3, 'UTC'), UInt8, String)),
    -- Answered visitor messages: (visitor message at, next agent message by seq at).
    replies         Array(Tuple(DateTime64(3, 'UTC'), DateTime64(3, 'UTC'))),
    -- Live view: its last lifecycle event left it without an agent, since when.
    waiting         UInt8,
    waiting_since   DateTime64(3, 'UTC'),
    version         DateTime64(9, 'UTC'),
    INDEX first_at_minmax first_at TYPE minmax GRANULARITY 1,
    INDEX last_at_minmax last_at TYPE minmax GRANULARITY 1
)
ENGINE = {replicated}ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant_id, created_at, conversation_id);

-- cluster only
CREATE TABLE IF NOT EXISTS conversation_summary {on_cluster} AS conversation_summary_local
ENGINE = Distributed({cluster}, currentDatabase(), conversation_summary_local, cityHash64(tenant_id, conversation_id));

-- The summary of every created conversation, from its merged state (docs/metrics.md
-- for each rule). Filtering on (tenant_id, conversation_id) reaches the state's index.
CREATE VIEW IF NOT EXISTS conversation_summary_source {on_cluster} AS
SELECT
    tenant_id,
    conversation_id,
    created_at,
    inbox_id,
    team_id,
    agents,
    arrayMin(arrayConcat([created_at], arrayMap(e -> e.1, episodes), arrayMap(x -> x.1, assigns),
        arrayMap(x -> x.1, resolves), arrayMap(x -> x.1, ratings), arrayMap(x -> x.1, replies)))
        AS first_at,
    arrayMax(arrayConcat([created_at], arrayMap(e -> e.1, episodes), arrayMap(x -> x.1, assigns),
        arrayMap(x -> x.1, resolves), arrayMap(x -> x.1, ratings), arrayMap(x -> x.1, replies)))
        AS last_at,
    episodes,
    assigns,
    resolves,
    ratings,
    replies,
    waiting,
    waiting_since,
    now64(9, 'UTC') AS version
FROM (
    SELECT
        tenant_id,
        conversation_id,
        s_created.1 AS created_at,
        s_created.2 AS inbox_id,
        s_team.2 AS team_id,
        arraySort(arrayDistinct(arrayMap(x -> x.4,
            arrayFilter(x -> x.3 = 3 AND x.4 != '', s_lifecycle)))) AS agents,
        arrayMap(x -> x.1, arrayFilter(x -> x.3 IN (1, 2), s_lifecycle)) AS starts,
        arrayMap(i -> if(i < length(starts), starts[i + 1],
                         toDateTime64('2200-01-01 00:00:00', 3, 'UTC')),
                 arrayEnumerate(starts)) AS ends,
        arraySort(arrayMap(x -> (x.1, x.4), arrayFilter(x -> x.3 = 3, s_lifecycle))) AS assigns,
        arraySort(arrayMap(x -> (x.1, x.4), arrayFilter(x -> x.3 = 4, s_lifecycle))) AS resolves,
        -- agent messages as (created_at, seq, sender_id), by time; and by seq for replies.
        arraySort(arrayMap(m -> (m.2, m.1, m.4), arrayFilter(m -> m.3 = 1, s_messages)))
            AS agent_msgs,
        arraySort(x -> x.2, agent_msgs) AS agent_by_seq,
        arrayMap((s, e) -> arrayFirst(x -> x.1 >= s AND x.1 < e, assigns), starts, ends) AS ep_a,
        arrayMap((s, e) -> arrayFirst(x -> x.1 >= s AND x.1 < e, agent_msgs), starts, ends) AS ep_r,
        arrayMap((s, a, r) -> (s, a.1, a.2, r.1, r.3), starts, ep_a, ep_r) AS episodes,
        arrayMap(r -> (r.1, r.3, r.4), s_ratings) AS ratings,
        arraySort(arrayMap(v -> (v.1, v.2.1), arrayFilter(v -> v.2.2 > 0,
            arrayMap(v -> (v.2, arrayFirst(m -> m.2 > v.1, agent_by_seq)),
                     arrayFilter(m -> m.3 = 0, s_messages))))) AS replies,
        -- waiting kinds: created, reopened, queued, transferred to a team.
        arrayMax(arrayMap(x -> if(x.3 IN (1, 2, 5, 6), toDateTime64(0, 3, 'UTC'), x.1),
                          s_lifecycle)) AS settled_at,
        toUInt8(length(s_lifecycle) > 0 AND s_lifecycle[-1].3 IN (1, 2, 5, 6)) AS waiting,
        if(waiting = 1,
           arrayMin(arrayMap(x -> x.1,
               arrayFilter(x -> x.3 IN (1, 2, 5, 6) AND x.1 > settled_at, s_lifecycle))),
           toDateTime64(0, 3, 'UTC')) AS waiting_since
    FROM (
        SELECT
            tenant_id,
            conversation_id,
            min(created) AS s_created,
            max(team) AS s_team,
            -- by (occurred_at, event_id): the order the live view reads them in.
            arraySort(groupUniqArrayArray(lifecycle)) AS s_lifecycle,
            arraySort(groupUniqArrayArray(ratings)) AS s_ratings,
            groupUniqArrayArray(messages) AS s_messages
        FROM conversation_state
        GROUP BY tenant_id, conversation_id
    )
    WHERE s_created.1 < toDateTime64('2200-01-01 00:00:00', 3, 'UTC')
);

-- Data stored before this migration: states from the typed tables (re-running is
-- harmless, sets absorb the copies), then every summary.
INSERT INTO conversation_state
SELECT
    tenant_id,
    conversation_id,
    min(if(type = 'conversation.created', (occurred_at, inbox_id),
           (toDateTime64('2200-01-01 00:00:00', 3, 'UTC'), ''))),
    max(if(team_id != '', (occurred_at, team_id), (toDateTime64(0, 3, 'UTC'), ''))),
    groupUniqArray((occurred_at, event_id,
        toUInt8(multiIf(type = 'conversation.created', 1, type = 'conversation.reopened', 2,
                        type = 'conversation.assigned', 3, type = 'conversation.resolved', 4,
                        type = 'conversation.queued', 5,
                        type = 'conversation.transferred' AND agent_id = '', 6,
                        type = 'conversation.transferred', 7, 0)),
        agent_id)),
    CAST([] AS Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))),
    CAST([] AS Array(Tuple(UInt64, DateTime64(3, 'UTC'), UInt8, String, UInt64)))
FROM conversation_events
GROUP BY tenant_id, conversation_id;

INSERT INTO conversation_state
SELECT
    tenant_id,
    conversation_id,
    (toDateTime64('2200-01-01 00:00:00', 3, 'UTC'), ''),
    (toDateTime64(0, 3, 'UTC'), ''),
    CAST([] AS Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))),
    CAST([] AS Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))),
    groupUniqArray((seq, created_at, toUInt8(sender_kind = 'agent'),
                    if(sender_kind = 'agent', sender_id, ''), cityHash64(message_id)))
FROM messages
WHERE sender_kind IN ('agent', 'visitor')
GROUP BY tenant_id, conversation_id;

INSERT INTO conversation_state
SELECT
    tenant_id,
    conversation_id,
    (toDateTime64('2200-01-01 00:00:00', 3, 'UTC'), ''),
    (toDateTime64(0, 3, 'UTC'), ''),
    CAST([] AS Array(Tuple(DateTime64(3, 'UTC'), UUID, UInt8, String))),
    groupUniqArray((occurred_at, event_id, rating, agent_id)),
    CAST([] AS Array(Tuple(UInt64, DateTime64(3, 'UTC'), UInt8, String, UInt64)))
FROM csat
GROUP BY tenant_id, conversation_id;

INSERT INTO conversation_summary
SELECT * FROM conversation_summary_source;
