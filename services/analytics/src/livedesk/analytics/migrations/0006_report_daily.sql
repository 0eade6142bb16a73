-- Per-day pre-aggregates of the report items (docs/metrics.md, reports.py), so a
-- report over a month reads a few thousand rows per day instead of deriving
-- every value of every conversation at query time.
--
-- * report_days: per (tenant, UTC day), when the day's items last changed
--   (dirtied_at) and when its pre-aggregate was last computed (computed_at,
--   also the id of that computation's rows in report_daily), both in
--   microseconds since the epoch and merged with max. A day is clean when
--   computed_at > dirtied_at; reports use report_daily for clean days only
--   and compute every other day live from conversation_summary.
-- * report_days_dirty_mv: every summary the ingester (re-)computes marks dirty
--   every day any of its items falls on, stamped with the summary's version,
--   in the same INSERT. Erasure and business-hours changes mark days dirty
--   themselves (erasure.py, api.py).
-- * report_daily: the items of a clean day grouped by conversation filters
--   (inbox, team, agents ever assigned), item agent and kind, with counts,
--   sums, every duration value (exact quantiles merge them), and for the
--   counts that look across days ("handled", "resolved", "rated_resolved")
--   the neighbouring instant that decides whether the item counts in a
--   given range. daily.py writes a new computation of a day (computed_at)
--   and deletes older ones a while later.

CREATE TABLE IF NOT EXISTS report_days{local} {on_cluster}
(
    tenant_id   String,
    day         Date,
    dirtied_at  SimpleAggregateFunction(max, UInt64),
    computed_at SimpleAggregateFunction(max, UInt64)
)
ENGINE = {replicated}AggregatingMergeTree
ORDER BY (tenant_id, day);

-- cluster only
CREATE TABLE IF NOT EXISTS report_days {on_cluster} AS report_days_local
ENGINE = Distributed({cluster}, currentDatabase(), report_days_local, cityHash64(tenant_id, day));

CREATE MATERIALIZED VIEW IF NOT EXISTS report_days_dirty_mv{local} {on_cluster}
TO report_days{local} AS
SELECT
    tenant_id,
    day,
    max(toUInt64(toUnixTimestamp64Micro(version))) AS dirtied_at,
    toUInt64(0) AS computed_at
FROM conversation_summary{local}
ARRAY JOIN arrayDistinct(arrayMap(t -> toDate(t), arrayConcat([created_at],
    arrayMap(e -> e.1, episodes), arrayMap(x -> x.1, assigns), arrayMap(x -> x.1, resolves),
    arrayMap(x -> x.1, ratings), arrayMap(x -> x.1, replies)))) AS day
GROUP BY tenant_id, day;

CREATE TABLE IF NOT EXISTS report_daily{local} {on_cluster}
(
    tenant_id   String,
    day         Date,
    computed_at UInt64,
    kind        LowCardinality(String),
    inbox_id    String,
    team_id     String,
    agents      Array(String),
    -- The agent the items are attributed to (docs/metrics.md), '' for none.
    agent       String,
    -- Items; the sum of their values (durations in seconds; ratings: 1 when 4 or 5).
    n           UInt64,
    total       Float64,
    -- Every duration value, and in business hours where the inbox has them.
    vals        Array(Float64),
    bh_n        UInt64,
    bh_total    Float64,
    bh_vals     Array(Float64),
    -- handled: the previous assignment to the same agent; resolved, rated_resolved:
    -- the next resolve. Only for the items that have one.
    links       Array(DateTime64(3, 'UTC')),
    -- created, resolution: items per 15-minute slot of the UTC day (96), for the
    -- volume and heatmap in any time zone whose offset is whole quarter hours.
    slots       Array(UInt32)
)
ENGINE = {replicated}MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, computed_at, kind, inbox_id, team_id, agent);

-- cluster only
CREATE TABLE IF NOT EXISTS report_daily {on_cluster} AS report_daily_local
ENGINE = Distributed({cluster}, currentDatabase(), report_daily_local, cityHash64(tenant_id, day));

-- Summaries stored before this migration: every day they touch is dirty.
INSERT INTO report_days
SELECT
    tenant_id,
    day,
    max(toUInt64(toUnixTimestamp64Micro(version))),
    toUInt64(0)
FROM conversation_summary FINAL
ARRAY JOIN arrayDistinct(arrayMap(t -> toDate(t), arrayConcat([created_at],
    arrayMap(e -> e.1, episodes), arrayMap(x -> x.1, assigns), arrayMap(x -> x.1, resolves),
    arrayMap(x -> x.1, ratings), arrayMap(x -> x.1, replies)))) AS day
GROUP BY tenant_id, day;
