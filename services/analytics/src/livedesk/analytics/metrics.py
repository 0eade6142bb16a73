"""The analytics service's own Prometheus metrics (default registry, served on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "EVENTS_ERASED",
    "EVENTS_INGESTED",
    "EVENTS_IN_FLIGHT",
    "INGEST_DELAY",
    "LAST_FLUSH_ROWS",
    "OLDEST_EVENT_AGE",
    "QUEUE_MESSAGES",
    "REPORT_DAYS_REFRESHED",
    "REPORT_DAYS_STALE",
    "REPORT_REFRESH_SECONDS",
    "REPORT_REPLANS",
    "REPORT_SECONDS",
    "STORE_CALLS",
]

EVENTS_INGESTED = Counter(
    "livedesk_analytics_events_ingested_total",
    "Events written to ClickHouse, by type (a redelivered event counts again).",
    ["type"],
)
EVENTS_ERASED = Counter(
    "livedesk_analytics_events_erased_total",
    "Events handled without a row in ClickHouse, by type: erasures applied (visitor.erased,"
    " conversation.purged) and events of an erased conversation, dropped on arrival.",
    ["type"],
)
LAST_FLUSH_ROWS = Gauge(
    "livedesk_analytics_last_flush_rows",
    "Rows in the last batch written to ClickHouse.",
)
QUEUE_MESSAGES = Gauge(
    "livedesk_analytics_queue_messages",
    "Events waiting in the analytics queue, not yet delivered (polled every LAG_POLL_INTERVAL).",
)
EVENTS_IN_FLIGHT = Gauge(
    "livedesk_analytics_events_in_flight",
    "Events delivered to this process and not yet stored in ClickHouse.",
)
OLDEST_EVENT_AGE = Gauge(
    "livedesk_analytics_oldest_event_age_seconds",
    "Age (now - occurred_at) of the oldest event delivered but not yet stored; 0 when none."
    " The queue is FIFO, so the events still in RabbitMQ are younger.",
)
INGEST_DELAY = Histogram(
    "livedesk_analytics_ingest_delay_seconds",
    "From an event's occurred_at to the moment ClickHouse stored it.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)
REPORT_SECONDS = Histogram(
    "livedesk_analytics_report_seconds",
    "Time to answer a report or search request, by report.",
    ["report"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REPORT_DAYS_REFRESHED = Counter(
    "livedesk_analytics_report_days_refreshed_total",
    "Report days (tenant, UTC day) whose pre-aggregate was re-computed (daily.py).",
)
REPORT_DAYS_STALE = Gauge(
    "livedesk_analytics_report_days_stale",
    "Report days changed since their last pre-aggregation, counted at the end of the last"
    " refresh round; reports compute them live until the next one.",
)
REPORT_REFRESH_SECONDS = Histogram(
    "livedesk_analytics_report_refresh_seconds",
    "Duration of one refresh round of the report days (its _count: rounds run).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
REPORT_REPLANS = Counter(
    "livedesk_analytics_report_replans_total",
    "Reports computed again because something they read pre-aggregated changed while they"
    " ran (a refresh, a batch changing an hour they read, an erasure, business hours).",
)
STORE_CALLS = Gauge(
    "livedesk_analytics_store_calls",
    "ClickHouse calls made and not yet returned, by store: writes (ingester, refresher,"
    " settings: one lane) and reads (reports and search: REPORT_QUERY_CONCURRENCY lanes);"
    " beyond the lanes they wait.",
    ["store"],
)
