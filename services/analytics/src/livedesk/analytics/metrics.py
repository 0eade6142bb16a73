"""The analytics service's own Prometheus metrics (default registry, served on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["EVENTS_INGESTED", "LAST_FLUSH_ROWS"]

EVENTS_INGESTED = Counter(
    "livedesk_analytics_events_ingested_total",
    "Events written to ClickHouse, by type (a redelivered event counts again).",
    ["type"],
)
LAST_FLUSH_ROWS = Gauge(
    "livedesk_analytics_last_flush_rows",
    "Rows in the last batch written to ClickHouse.",
)
