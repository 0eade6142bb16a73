-- Report settings that no event carries, set through the admin endpoints
-- (PUT /api/v1/reports/settings, PUT /api/v1/reports/settings/business-hours/{inbox_id}).
-- The row with the highest `version` (nanoseconds of the write) wins.

-- The tenant's time zone: volume buckets and the busiest-hours heatmap use it.
CREATE TABLE IF NOT EXISTS tenant_settings{local} {on_cluster}
(
    tenant_id  String,
    time_zone  String,
    version    UInt64
)
ENGINE = {replicated}ReplacingMergeTree(version)
ORDER BY tenant_id;

-- cluster only
CREATE TABLE IF NOT EXISTS tenant_settings {on_cluster} AS tenant_settings_local
ENGINE = Distributed({cluster}, currentDatabase(), tenant_settings_local, cityHash64(tenant_id));

-- Weekly business hours of an inbox, in its own time zone. Windows are
-- [start, end) in seconds after Monday 00:00 local time; `enabled` = 0 removes them.
CREATE TABLE IF NOT EXISTS inbox_business_hours{local} {on_cluster}
(
    tenant_id  String,
    inbox_id   String,
    time_zone  String,
    starts     Array(UInt32),
    ends       Array(UInt32),
    enabled    UInt8,
    version    UInt64
)
ENGINE = {replicated}ReplacingMergeTree(version)
ORDER BY (tenant_id, inbox_id);

-- cluster only
CREATE TABLE IF NOT EXISTS inbox_business_hours {on_cluster} AS inbox_business_hours_local
ENGINE = Distributed({cluster}, currentDatabase(), inbox_business_hours_local, cityHash64(tenant_id));
