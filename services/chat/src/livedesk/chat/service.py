"""Wiring of a chat pod: dependencies, HTTP + WebSocket server, outbox relay, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import resources

from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from livedesk.assignment_client import AssignmentClient
from livedesk.chat.actions import ChatActions
from livedesk.chat.api_admin import add_admin_routes
from livedesk.chat.api_auth import add_auth_routes
from livedesk.chat.api_conversations import add_conversation_routes
from livedesk.chat.api_retention import add_retention_routes
from livedesk.chat.api_support import CHAT_KEY, ChatContext, chat_errors
from livedesk.chat.archive import ArchiveReader
from livedesk.chat.assignment_link import AssignmentLink
from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.erasure import Eraser
from livedesk.chat.fanout import Hub
from livedesk.chat.fanout_cluster import ClusterHub
from livedesk.chat.hot_cache import open_hot_cache
from livedesk.chat.inbound import INBOUND_EVENT_TYPES, RoutingEvents
from livedesk.chat.index import ConversationIndex, IndexSync
from livedesk.chat.replica_lag import ReplicaLagMonitor
from livedesk.chat.settings import ChatSettings
from livedesk.chat.shards import open_shards
from livedesk.chat.sockets import SocketRegistry
from livedesk.chat.ws import WS_KEY, WsContext, websocket
from livedesk.platform.auth import load_issuer, load_verifier
from livedesk.platform.auth.http import VERIFIER_KEY
from livedesk.platform.bus import EventConsumer, EventPublisher, QueueTopology, connect
from livedesk.platform.bus.outbox import OutboxRelay
from livedesk.platform.errors import DependencyError
from livedesk.platform.health import HealthChecks
from livedesk.platform.http import add_ops_routes, json_errors, request_context
from livedesk.platform.logging import configure_logging, get_logger
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.redis import AnyRedis, connect_redis, connect_redis_cluster
from livedesk.platform.runtime import Shutdown, serve_http, settle_garbage_collector
from livedesk.platform.settings import load_settings

__all__ = ["OPENAPI_TEXT", "create_app", "main"]

log = get_logger("livedesk.chat")

OPENAPI_TEXT = resources.files("livedesk.chat").joinpath("openapi.yaml").read_text("utf-8")
MAX_BODY = 64 * 1024


async def _openapi(_: web.Request) -> web.Response:
    return web.Response(text=OPENAPI_TEXT, content_type="application/yaml")


def create_app(
    ctx: ChatContext,
    actions: ChatActions,
    ws: WsContext,
    health: HealthChecks,
    eraser: Eraser | None = None,
) -> web.Application:
    """The chat HTTP application: REST API, WebSocket endpoint, ops routes."""
    app = web.Application(
        middlewares=[request_context, json_errors, chat_errors], client_max_size=MAX_BODY
    )
    app[CHAT_KEY] = ctx
    app[WS_KEY] = ws
    app[VERIFIER_KEY] = ws.verifier
    add_ops_routes(app, health)
    app.router.add_get("/api/v1/openapi.yaml", _openapi)
    add_auth_routes(app)
    add_admin_routes(app)
    add_conversation_routes(app, actions)
    if eraser is not None:
        add_retention_routes(app, eraser)
    app.router.add_get("/ws", websocket)
    return app


@asynccontextmanager
async def _routing_consumer(settings: ChatSettings, handler: RoutingEvents) -> AsyncIterator[None]:
    """Consume routing events; keeps trying in the background while RabbitMQ is away."""
    started: list[tuple[AbstractRobustConnection, EventConsumer]] = []

    async def run() -> None:
        while True:
            try:
                connection = await connect(settings.amqp_url, "chat-routing")
                break
            except DependencyError as exc:
                log.warning("routing_consumer_waiting_for_broker", error=str(exc))
                await asyncio.sleep(2)
        consumer = EventConsumer(
            connection,
            exchange_name=settings.amqp_exchange,
            topology=QueueTopology(
                f"{settings.amqp_queue_prefix}chat", retry_delays_ms=settings.amqp_retry_delays_ms
            ),
            event_types=INBOUND_EVENT_TYPES,
            handler=handler.handle,
            prefetch=settings.amqp_prefetch,
        )
        started.append((connection, consumer))
        await consumer.start()

    task = asyncio.create_task(run(), name="routing-consumer")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        for connection, consumer in started:
            await consumer.stop(settings.shutdown_timeout / 4)
            with contextlib.suppress(Exception):
                await connection.close()


async def main(shutdown: Shutdown) -> None:
    """Run one chat pod until ``shutdown``."""
    settings = load_settings(ChatSettings)
    configure_logging("chat", settings.log_level, settings.log_format)
    shutdown.drain_timeout = settings.shutdown_timeout
    pod_id = settings.pod_id or f"{socket.gethostname()}-{os.getpid()}"
    issuer, verifier = load_issuer(settings), load_verifier(settings)
    async with AsyncExitStack() as stack:
        pool = await open_database(
            settings.database_url,
            [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"],
            auto_create=settings.db_auto_create,
            max_size=settings.db_pool_size,
        )
        stack.push_async_callback(pool.close)
        shards = await open_shards(
            settings.shard_map(),
            directory_dsn=settings.database_url,
            directory_pool=pool,
            auto_create=settings.db_auto_create,
            max_size=settings.db_pool_size,
        )
        stack.push_async_callback(shards.close, [pool])
        redis: AnyRedis
        if settings.redis_cluster:
            # Every chat key and channel is routed by slot; fan-out is sharded.
            redis = await connect_redis_cluster(settings.redis_url)
            hub: Hub = ClusterHub(redis)
        else:
            redis = await connect_redis(settings.redis_url)
            hub = Hub(redis)
        stack.push_async_callback(redis.aclose)
        await hub.start()
        stack.push_async_callback(hub.stop)

        async def connect_publisher() -> EventPublisher:
            connection = await connect(settings.amqp_url, "chat-outbox")
            return await EventPublisher.create(
                connection,
                settings.amqp_exchange,
                settings.amqp_publish_timeout,
                owns_connection=True,
            )

        # Chat keeps accepting messages while RabbitMQ is down: the relay
        # connects on its own and catches up, so the broker is not a start-up
        # or readiness dependency here. One relay per physical database (each
        # shard has its own outbox); the advisory lock elects one per database.
        for dsn in dict.fromkeys([settings.database_url, *shards.dsns()]):
            relay = OutboxRelay(dsn, connect_publisher, poll_interval=settings.outbox_poll_interval)
            relay.start()
            stack.push_async_callback(relay.stop, settings.shutdown_timeout / 3)

        directory = Directory(pool)
        index = ConversationIndex(pool)
        index_sync = IndexSync(shards, index, interval=settings.index_sync_interval)
        index_sync.start()
        stack.push_async_callback(index_sync.stop)
        lag_monitor = ReplicaLagMonitor(
            shards, max_lag=settings.replica_max_lag, interval=settings.replica_lag_interval
        )
        lag_monitor.start()
        stack.push_async_callback(lag_monitor.stop)
        hot = open_hot_cache(settings, redis)
        if hot is not None and hot.redis is not redis:
            stack.push_async_callback(hot.redis.aclose)
        conversations = ConversationStore(
            pool, shards, index, hot=hot, batch_max=settings.message_batch_max
        )
        archive = settings.open_archive_store()
        stack.push_async_callback(archive.aclose)
        actions = ChatActions(
            conversations,
            directory,
            hub,
            settings.max_message_chars,
            archive=ArchiveReader(archive),
        )
        await stack.enter_async_context(_routing_consumer(settings, RoutingEvents(actions)))

        assignment_client = AssignmentClient(settings.assignment_grpc_url, timeout=3)
        stack.push_async_callback(assignment_client.close)
        registry = SocketRegistry(
            settings.ws_connections_per_user,
            settings.ws_messages_per_second * 2,
            settings.ws_message_burst * 2,
        )
        link = AssignmentLink(assignment_client, registry, pod_id)
        await stack.enter_async_context(link.reporting(settings.presence_interval))
        health = HealthChecks()
        health.add("postgres", lambda: pool.fetchval("SELECT 1"))
        for name, shard_pool in shards.distinct().items():
            if shard_pool is not pool:
                health.add(f"postgres_{name}", functools.partial(shard_pool.fetchval, "SELECT 1"))
        health.add("redis", redis.ping)
        app = create_app(
            ChatContext(settings, directory, conversations, issuer, link),
            actions,
            WsContext(settings, actions, registry, verifier, redis, link.set_status, pod_id),
            health,
            Eraser(pool, conversations, archive),
        )
        await stack.enter_async_context(serve_http(app, settings.host, settings.port))
        settle_garbage_collector()
        log.info("chat_started", port=settings.port, pod_id=pod_id)
        await shutdown.wait()
        health.draining = True
        log.info("chat_draining", sockets=len(registry.sockets))
        await registry.drain(timeout=min(2.0, settings.shutdown_timeout / 4))
