"""Prometheus metrics shared by the platform, and the ``/metrics`` exposition."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "BUS_CONSUMED",
    "BUS_HANDLER_SECONDS",
    "BUS_PUBLISHED",
    "BUS_PUBLISH_SECONDS",
    "CONTENT_TYPE_LATEST",
    "OUTBOX_PARKED",
    "OUTBOX_PENDING",
    "READY",
    "render_metrics",
]

BUS_PUBLISHED = Counter(
    "livedesk_bus_published_total",
    "Events confirmed by the broker, by type and outcome (ok, failed).",
    ["type", "outcome"],
)
BUS_PUBLISH_SECONDS = Histogram(
    "livedesk_bus_publish_seconds",
    "Time from publish to broker confirm.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BUS_CONSUMED = Counter(
    "livedesk_bus_consumed_total",
    "Events taken from a queue, by queue, type and outcome (ok, duplicate, retry, dead_letter).",
    ["queue", "type", "outcome"],
)
BUS_HANDLER_SECONDS = Histogram(
    "livedesk_bus_handler_seconds",
    "Time spent in an event handler.",
    ["queue"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
OUTBOX_PENDING = Gauge(
    "livedesk_outbox_pending",
    "Outbox rows committed but not yet confirmed by the broker.",
)
OUTBOX_PARKED = Counter(
    "livedesk_outbox_parked_total",
    "Outbox events parked in outbox_unroutable after no queue took them for too long.",
)
READY = Gauge("livedesk_ready", "1 when every readiness check passes, else 0.")


def render_metrics() -> bytes:
    """The default registry in Prometheus text format."""
    return generate_latest(REGISTRY)
