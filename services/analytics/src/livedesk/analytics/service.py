"""The analytics process: every event from the bus into ClickHouse, plus the ops routes.

Start-up, in order: open the store (ClickHouse server or chDB), apply the
schema migrations, connect to RabbitMQ, warm the report queries up (``/readyz``
waits for it, ``warmup.py``), serve HTTP (reports, search and ops routes),
start consuming, polling the queue depth and re-computing the
report days changed (``daily.py``). On
SIGTERM, the reverse: report "draining" on /readyz, stop consuming (in-flight
events finish and their batch is written, the rest stay in the queue), write
anything still pending, stop HTTP, close RabbitMQ, close the store.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from livedesk.analytics.api import create_app, report_query_settings
from livedesk.analytics.daily import DailyRefresher
from livedesk.analytics.ingest import EventIngestor
from livedesk.analytics.lag import QueueDepthMonitor
from livedesk.analytics.schema import migrate
from livedesk.analytics.settings import AnalyticsSettings
from livedesk.analytics.store import Store
from livedesk.analytics.warmup import WarmUp
from livedesk.platform.auth import AuthSettings, load_verifier
from livedesk.platform.bus import EventConsumer, QueueTopology, connect, connection_check
from livedesk.platform.health import HealthChecks
from livedesk.platform.logging import configure_logging, get_logger
from livedesk.platform.runtime import serve_http
from livedesk.platform.settings import load_settings

if TYPE_CHECKING:
    from livedesk.platform.auth import TokenVerifier
    from livedesk.platform.runtime import Shutdown

__all__ = ["QUEUE_BASE", "SERVICE", "main", "run"]

SERVICE = "analytics"
QUEUE_BASE = "analytics"
"""The queue is ``AMQP_QUEUE_PREFIX + "analytics"``, bound to every event type."""

log = get_logger("livedesk.analytics")


async def main(shutdown: Shutdown) -> None:
    """Entry point for :func:`livedesk.platform.runtime.run_service`."""
    settings = load_settings(AnalyticsSettings)
    # Before anything opens: bad key material must stop the process at once (exit 2).
    verifier = load_verifier(load_settings(AuthSettings))
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    shutdown.drain_timeout = settings.shutdown_timeout
    await run(settings, shutdown, verifier)


async def run(settings: AnalyticsSettings, shutdown: Shutdown, verifier: TokenVerifier) -> None:
    """Run the service with ``settings`` until ``shutdown`` is requested, then drain."""
    health = HealthChecks()
    async with AsyncExitStack() as stack:
        store = await Store.open(
            clickhouse_url=settings.clickhouse_url, chdb_path=settings.chdb_path
        )
        stack.push_async_callback(store.close)
        applied = await migrate(store, cluster=settings.clickhouse_cluster)
        log.info("schema_ready", applied=applied)

        connection = await connect(settings.amqp_url, SERVICE)
        stack.push_async_callback(connection.close)

        consumer_started = False
        amqp_connected = connection_check(connection)

        async def rabbitmq_ready() -> None:
            await amqp_connected()
            if not consumer_started:
                raise RuntimeError("consumer not started yet")

        health.add("clickhouse", store.ping)
        health.add("rabbitmq", rabbitmq_ready)
        reads = await store.open_readers(settings.report_query_concurrency)
        stack.push_async_callback(reads.close)
        warm = WarmUp(
            reads,
            settings.report_warm_up_tenants,
            timeout=settings.report_query_timeout,
            settings=report_query_settings(settings.report_query_timeout),
        )
        stack.push_async_callback(warm.stop)
        health.add("warm-up", warm.check)
        app = create_app(
            store,
            health,
            verifier,
            reads=reads,
            query_timeout=settings.report_query_timeout,
        )
        await stack.enter_async_context(serve_http(app, settings.host, settings.port))

        ingestor = EventIngestor(
            store,
            batch_size=settings.ingest_batch_size,
            flush_interval=settings.ingest_flush_interval,
            cluster=settings.clickhouse_cluster,
        )
        stack.push_async_callback(ingestor.close)
        consumer = EventConsumer(
            connection,
            exchange_name=settings.amqp_exchange,
            topology=QueueTopology(
                f"{settings.amqp_queue_prefix}{QUEUE_BASE}",
                retry_delays_ms=settings.amqp_retry_delays_ms,
            ),
            event_types=["#"],
            handler=ingestor.handle,
            # Enough deliveries in hand to fill one batch while the previous one is written.
            prefetch=2 * settings.ingest_batch_size,
            concurrency=settings.ingest_batch_size,
        )
        await consumer.start()
        # Leave time, within the runtime's forced-exit deadline, to close after draining.
        stack.push_async_callback(consumer.stop, settings.shutdown_timeout / 2)
        consumer_started = True
        lag = QueueDepthMonitor(connection, consumer.topology.name, settings.lag_poll_interval)
        lag.start()
        stack.push_async_callback(lag.stop)
        refresher = DailyRefresher(
            store, settings.report_refresh_interval, settings.clickhouse_cluster
        )
        refresher.start()
        stack.push_async_callback(refresher.stop)
        log.info("analytics_started", store=store.target, queue=consumer.topology.name)

        await shutdown.wait()
        health.draining = True
        log.info("analytics_draining")
