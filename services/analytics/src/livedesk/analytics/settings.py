"""The analytics service's settings, one frozen object read from the environment.

Besides the variables every service and every bus user has (see
:mod:`livedesk.platform.settings`):

- ``PORT``: HTTP port of the ops routes and, later, the reports API.
- ``CLICKHOUSE_URL``: a ClickHouse server (``http[s]://user:password@host:port/database``);
  unset or empty means the embedded chDB engine.
- ``CHDB_PATH``: chDB's data directory, used only without ``CLICKHOUSE_URL``.
- ``INGEST_BATCH_SIZE``: rows per INSERT at most.
- ``INGEST_FLUSH_INTERVAL``: seconds a row may wait for its batch to fill.
- ``CLICKHOUSE_CLUSTER``: cluster name; when set (with ``CLICKHOUSE_URL``) the schema is
  created ``ON CLUSTER`` with Replicated tables and Distributed tables over them.
- ``LAG_POLL_INTERVAL``: seconds between two reads of the queue depth for the lag metrics.
- ``REPORT_QUERY_TIMEOUT``: seconds a report or search query may run before it is abandoned (504).
- ``REPORT_QUERY_CONCURRENCY``: report and search queries that may run at once, each on
  a client and thread of its own beside the one the ingester and refresher write through.
- ``REPORT_WARM_UP_TENANTS``: at start, the reports of this many tenants (the latest
  active) are asked once before ``/readyz`` says ready (``warmup.py``); 0: the engine only.
- ``REPORT_REFRESH_INTERVAL``: seconds between two re-computations of the report days
  changed since (``daily.py``); days not yet re-computed are computed live by reports.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from livedesk.platform.settings import AmqpSettings, ServiceSettings

__all__ = ["AnalyticsSettings"]

# The consumer's prefetch is twice the batch size and AMQP caps prefetch at 65535.
MAX_BATCH_SIZE = 30_000


class AnalyticsSettings(ServiceSettings, AmqpSettings):
    """Configuration of the analytics service. Field ``foo_bar`` is read from ``FOO_BAR``."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    port: int = Field(8002, ge=1, le=65535)
    clickhouse_url: str | None = None
    chdb_path: str = Field(".run/analytics/chdb", min_length=1)
    ingest_batch_size: int = Field(5000, gt=0, le=MAX_BATCH_SIZE)
    ingest_flush_interval: float = Field(0.5, gt=0, le=60)
    clickhouse_cluster: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]*$")
    lag_poll_interval: float = Field(5.0, gt=0, le=3600)
    report_query_timeout: float = Field(30.0, gt=0, le=600)
    report_query_concurrency: int = Field(2, ge=1, le=32)
    report_warm_up_tenants: int = Field(3, ge=0, le=100)
    report_refresh_interval: float = Field(30.0, gt=0, le=86400)

    @field_validator("clickhouse_url")
    @classmethod
    def _server_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL of a ClickHouse server")
        return value.strip()

    @field_validator("clickhouse_cluster")
    @classmethod
    def _cluster_name(cls, value: str | None) -> str | None:
        return value or None
