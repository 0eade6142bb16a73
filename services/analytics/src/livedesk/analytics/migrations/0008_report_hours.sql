-- Pre-aggregates for ranges ending at "now" (the API's default "last 30 days
-- up to now"), which 0006 / 0007 still left partly live: the partial hours at a
-- range's ends, and the whole of today (dirty most of the time in a live system).
-- A live part costs a fixed ≈ 25 ms of query analysis (the per-conversation
-- lambdas) plus its reading, whatever it holds (docs/benchmarks/analytics.md).
--
-- * report_hourly.items: one (at, v, bh, link) per item of the row: the values
--   its n, total, vals, bh_* and links aggregate (reports.items_sql). A report
--   reads a partial hour of a clean day from the items whose instant is inside
--   its range, aggregated as the hour's computation aggregated all of them.
-- * report_hours: per (tenant, UTC day, hour), when the hour's items last changed
--   (dirtied_at, microseconds, merged with max), next to report_days (which still
--   decides what the refresher re-computes: whole days). report_hours_dirty_mv
--   marks every hour a (re-)computed summary's items fall on, in the same INSERT
--   as report_days_dirty_mv; erasures and business-hours changes mark all hours
--   of their days (daily.py). So when a day changed after its last computation,
--   its hours that did not change since are still that computation's, and
--   reports read them pre-aggregated (reports.py): in a live system today's
--   completed hours, with only the hours that changed since the last refresh
--   round (usually the current one) live.

ALTER TABLE report_hourly{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS items
        Array(Tuple(at DateTime64(3, 'UTC'), v Float64, bh Float64, link DateTime64(3, 'UTC')));

-- cluster only
ALTER TABLE report_hourly {on_cluster}
    ADD COLUMN IF NOT EXISTS items
        Array(Tuple(at DateTime64(3, 'UTC'), v Float64, bh Float64, link DateTime64(3, 'UTC')));

CREATE TABLE IF NOT EXISTS report_hours{local} {on_cluster}
(
    tenant_id   String,
    day         Date,
    hour        UInt8,
    dirtied_at  SimpleAggregateFunction(max, UInt64)
)
ENGINE = {replicated}AggregatingMergeTree
ORDER BY (tenant_id, day, hour);

-- cluster only
CREATE TABLE IF NOT EXISTS report_hours {on_cluster} AS report_hours_local
ENGINE = Distributed({cluster}, currentDatabase(), report_hours_local, cityHash64(tenant_id, day));

CREATE MATERIALIZED VIEW IF NOT EXISTS report_hours_dirty_mv{local} {on_cluster}
TO report_hours{local} AS
SELECT
    tenant_id,
    toDate(h) AS day,
    toUInt8(toHour(h)) AS hour,
    max(toUInt64(toUnixTimestamp64Micro(version))) AS dirtied_at
FROM conversation_summary{local}
ARRAY JOIN arrayDistinct(arrayMap(t -> toStartOfHour(t), arrayConcat([created_at],
    arrayMap(e -> e.1, episodes), arrayMap(x -> x.1, assigns), arrayMap(x -> x.1, resolves),
    arrayMap(x -> x.1, ratings), arrayMap(x -> x.1, replies)))) AS h
GROUP BY tenant_id, day, hour;

-- Hours computed before this migration have no items: every stored day (all its
-- hours) is dirty, and computing it again writes them (reports are exact meanwhile).
INSERT INTO report_hours (tenant_id, day, hour, dirtied_at)
SELECT tenant_id, day, arrayJoin(range(24)), toUInt64(toUnixTimestamp64Micro(now64(6)))
FROM report_days
GROUP BY tenant_id, day;

INSERT INTO report_days (tenant_id, day, dirtied_at, computed_at)
SELECT tenant_id, day, toUInt64(toUnixTimestamp64Micro(now64(6))), 0 FROM report_days
GROUP BY tenant_id, day;
