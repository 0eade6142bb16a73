-- Business-hours changes per inbox, so that a change no longer makes every
-- pre-aggregated day of the tenant live (0006-0008 marked them all dirty).
--
-- * report_hours_changes: per (tenant, inbox), when its business hours last
--   changed (changed_at, microseconds of the store's clock, merged with max;
--   the API marks it before and after writing inbox_business_hours). Only the
--   business seconds (bh_*) of that inbox's pre-aggregated rows depend on the
--   hours: a report reads every row as before, and for the rows of a changed
--   inbox computed at or before changed_at takes the business seconds from the
--   rows' items (report_hourly.items: instant and value give both ends of each
--   duration) under the inbox's current hours (reports.py). The refresher
--   re-computes every day of the tenant computed at or before its last change
--   (daily.py).

CREATE TABLE IF NOT EXISTS report_hours_changes{local} {on_cluster}
(
    tenant_id   String,
    inbox_id    String,
    changed_at  SimpleAggregateFunction(max, UInt64)
)
ENGINE = {replicated}AggregatingMergeTree
ORDER BY (tenant_id, inbox_id);

-- cluster only
CREATE TABLE IF NOT EXISTS report_hours_changes {on_cluster} AS report_hours_changes_local
ENGINE = Distributed({cluster}, currentDatabase(), report_hours_changes_local, cityHash64(tenant_id));

-- * report_hours_fix: the business seconds of those rows under the new hours,
--   written once per change (daily.write_hours_fix, by the API right after the
--   change: two statements for all the tenant's days), per report_hourly row
--   (same key, plus `version`: the tenant's latest changed_at it was written
--   for), and per whole day as hour 24 (from its hours). A report whose tenant's latest change is `version` reads them instead
--   of deriving the values again from the items, for the computations listed in
--   report_hours_fixed. Deleted with their computation (daily.py).

CREATE TABLE IF NOT EXISTS report_hours_fix{local} {on_cluster}
(
    tenant_id   String,
    version     UInt64,
    -- Random id of the write: reports read one write per computation (two
    -- replicas may write the same change's rows at once).
    writer      UInt64,
    day         Date,
    computed_at UInt64,
    hour        UInt8,
    kind        LowCardinality(String),
    inbox_id    String,
    team_id     String,
    agents      Array(String),
    agent       String,
    bh_n        UInt64,
    bh_total    Float64,
    bh_vals     Array(Float64),
    -- The same values with their items' instants, for the partial hours of a range.
    items       Array(Tuple(at DateTime64(3, 'UTC'), bh Float64))
)
ENGINE = {replicated}MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, version, day, computed_at, writer, hour, kind, inbox_id, team_id, agent);

-- cluster only
CREATE TABLE IF NOT EXISTS report_hours_fix {on_cluster} AS report_hours_fix_local
ENGINE = Distributed({cluster}, currentDatabase(), report_hours_fix_local, cityHash64(tenant_id, day));

CREATE TABLE IF NOT EXISTS report_hours_fixed{local} {on_cluster}
(
    tenant_id   String,
    version     UInt64,
    writer      UInt64,
    -- (day, computed_at) of every computation report_hours_fix holds rows of.
    covered     Array(Tuple(Date, UInt64))
)
ENGINE = {replicated}MergeTree
ORDER BY (tenant_id, version);

-- cluster only
CREATE TABLE IF NOT EXISTS report_hours_fixed {on_cluster} AS report_hours_fixed_local
ENGINE = Distributed({cluster}, currentDatabase(), report_hours_fixed_local, cityHash64(tenant_id));
