"""Wiring of an assignment replica: dependencies, engine, consumer, gRPC and HTTP, graceful stop."""

from __future__ import annotations

from contextlib import AsyncExitStack

from aiohttp import web

from livedesk.assignment.engine import Engine, EngineConfig
from livedesk.assignment.grpc_server import serve_grpc
from livedesk.assignment.intake import INTAKE_EVENT_TYPES, Intake
from livedesk.assignment.loops import background_loops
from livedesk.assignment.recorder import Recorder
from livedesk.assignment.servicer import AssignmentApi
from livedesk.assignment.settings import AssignmentSettings
from livedesk.assignment.store import RoutingStore
from livedesk.platform.bus import (
    EventConsumer,
    EventPublisher,
    QueueTopology,
    connect,
    connection_check,
)
from livedesk.platform.bus.outbox import OutboxRelay
from livedesk.platform.health import HealthChecks
from livedesk.platform.http import add_ops_routes, json_errors, request_context
from livedesk.platform.logging import configure_logging, get_logger
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.redis import connect_redis
from livedesk.platform.runtime import Shutdown, serve_http
from livedesk.platform.settings import load_settings

__all__ = ["main"]

log = get_logger("livedesk.assignment")


async def main(shutdown: Shutdown) -> None:
    """Run one assignment replica until ``shutdown``."""
    settings = load_settings(AssignmentSettings)
    configure_logging("assignment", settings.log_level, settings.log_format)
    shutdown.drain_timeout = settings.shutdown_timeout
    async with AsyncExitStack() as stack:
        pool = await open_database(
            settings.database_url,
            [PLATFORM_MIGRATIONS, "livedesk.assignment.migrations"],
            auto_create=settings.db_auto_create,
            max_size=settings.db_pool_size,
        )
        stack.push_async_callback(pool.close)
        redis = await connect_redis(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        amqp = await connect(settings.amqp_url, "assignment")
        stack.push_async_callback(amqp.close)

        health = HealthChecks()
        health.add("postgres", lambda: pool.fetchval("SELECT 1"))
        health.add("redis", redis.ping)
        health.add("rabbitmq", connection_check(amqp))

        async def connect_publisher() -> EventPublisher:
            connection = await connect(settings.amqp_url, "assignment-outbox")
            return await EventPublisher.create(
                connection,
                settings.amqp_exchange,
                settings.amqp_publish_timeout,
                owns_connection=True,
            )

        relay = OutboxRelay(
            settings.database_url, connect_publisher, batch_size=settings.outbox_batch_size
        )
        relay.start()
        stack.push_async_callback(relay.stop, settings.shutdown_timeout / 3)

        store = RoutingStore(redis, settings.redis_key_prefix)
        recorder = Recorder(pool, store, batch_size=settings.record_batch_size)
        stack.push_async_callback(recorder.close)
        engine = Engine(
            pool,
            store,
            recorder,
            EngineConfig(
                presence_grace_seconds=settings.presence_grace_seconds,
                first_reply_sla_seconds=settings.first_reply_sla_seconds,
                route_batch_size=settings.route_batch_size,
                route_batches_in_flight=settings.route_batches_in_flight,
            ),
        )
        stack.push_async_callback(engine.close)
        # Bring back the routing state of every tenant Redis lost while we were away.
        await engine.ensure_live(await engine.tenants())
        await stack.enter_async_context(
            background_loops(
                engine,
                sweep_interval=settings.sweep_interval,
                position_interval=settings.queue_position_interval,
            )
        )

        consumer = EventConsumer(
            amqp,
            exchange_name=settings.amqp_exchange,
            topology=QueueTopology(
                f"{settings.amqp_queue_prefix}assignment",
                retry_delays_ms=settings.amqp_retry_delays_ms,
            ),
            event_types=INTAKE_EVENT_TYPES,
            handler=Intake(engine, pool).handle,
            prefetch=max(settings.amqp_prefetch, settings.consumer_concurrency),
            concurrency=settings.consumer_concurrency,
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop, settings.shutdown_timeout / 3)

        await stack.enter_async_context(
            serve_grpc(settings.host, settings.grpc_port, AssignmentApi(engine), health)
        )
        app = web.Application(middlewares=[request_context, json_errors])
        add_ops_routes(app, health)
        await stack.enter_async_context(serve_http(app, settings.host, settings.port))
        log.info("assignment_started", port=settings.port, grpc_port=settings.grpc_port)
        await shutdown.wait()
        health.draining = True
        log.info("assignment_draining")
