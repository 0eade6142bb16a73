-- Per-hour pre-aggregates of the report items, next to the per-day ones
-- (0006), so a range that does not start and end at UTC midnight (the API's
-- default "last 30 days up to now", a tenant's local midnight) reads the whole
-- UTC hours of its partial first and last days pre-aggregated too, and computes
-- only the partial hours at its ends live.
--
-- * report_hourly: the same rows as report_daily, per UTC hour of the day
--   (hour 0-23) instead of per day, written by the same computation (daily.py
--   writes the hours first, then the day's rows from them, with the same
--   computed_at). A day's hours are used exactly when its report_daily rows
--   would be (report_days: computed after the day's last change), and
--   deleted with them (replaced computations, erasure). slots: items per
--   15-minute slot of the hour (4), for created and resolution.

CREATE TABLE IF NOT EXISTS report_hourly{local} {on_cluster}
(
    tenant_id   String,
    day         Date,
    hour        UInt8,
    computed_at UInt64,
    kind        LowCardinality(String),
    inbox_id    String,
    team_id     String,
    agents      Array(String),
    agent       String,
    n           UInt64,
    total       Float64,
    vals        Array(Float64),
    bh_n        UInt64,
    bh_total    Float64,
    bh_vals     Array(Float64),
    links       Array(DateTime64(3, 'UTC')),
    slots       Array(UInt32)
)
ENGINE = {replicated}MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, computed_at, hour, kind, inbox_id, team_id, agent);

-- cluster only
CREATE TABLE IF NOT EXISTS report_hourly {on_cluster} AS report_hourly_local
ENGINE = Distributed({cluster}, currentDatabase(), report_hourly_local, cityHash64(tenant_id, day));

-- Days pre-aggregated before this migration have no hours: computing them again
-- writes both (reports are exact meanwhile, those days' partial hours live).
INSERT INTO report_days (tenant_id, day, dirtied_at, computed_at)
SELECT tenant_id, day, toUInt64(toUnixTimestamp64Micro(now64(6))), 0 FROM report_days
GROUP BY tenant_id, day;
