"""Wiring of a chat pod: dependencies, HTTP server, outbox relay, graceful stop."""

from __future__ import annotations

from contextlib import AsyncExitStack

from aiohttp import web

from livedesk.chat.api import MAX_BODY, add_api_routes
from livedesk.chat.settings import ChatSettings
from livedesk.chat.store import ConversationStore
from livedesk.platform.bus import EventPublisher, connect
from livedesk.platform.bus.outbox import OutboxRelay
from livedesk.platform.health import HealthChecks
from livedesk.platform.http import add_ops_routes, json_errors, request_context
from livedesk.platform.logging import configure_logging, get_logger
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.redis import connect_redis
from livedesk.platform.runtime import Shutdown, serve_http
from livedesk.platform.settings import load_settings

__all__ = ["main"]

log = get_logger("livedesk.chat")


def create_app(store: ConversationStore, health: HealthChecks) -> web.Application:
    """The chat HTTP application."""
    app = web.Application(middlewares=[request_context, json_errors], client_max_size=MAX_BODY)
    add_ops_routes(app, health)
    add_api_routes(app, store)
    return app


async def main(shutdown: Shutdown) -> None:
    """Run one chat pod until ``shutdown``."""
    settings = load_settings(ChatSettings)
    configure_logging("chat", settings.log_level, settings.log_format)
    shutdown.drain_timeout = settings.shutdown_timeout
    async with AsyncExitStack() as stack:
        pool = await open_database(
            settings.database_url,
            [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"],
            auto_create=settings.db_auto_create,
            max_size=settings.db_pool_size,
        )
        stack.push_async_callback(pool.close)
        redis = await connect_redis(settings.redis_url)
        stack.push_async_callback(redis.aclose)

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
        # or readiness dependency here.
        relay = OutboxRelay(settings.database_url, connect_publisher)
        relay.start()
        stack.push_async_callback(relay.stop, settings.shutdown_timeout / 2)

        health = HealthChecks()
        health.add("postgres", lambda: pool.fetchval("SELECT 1"))
        health.add("redis", redis.ping)
        app = create_app(ConversationStore(pool), health)
        await stack.enter_async_context(serve_http(app, settings.host, settings.port))
        log.info("chat_started", port=settings.port)
        await shutdown.wait()
        health.draining = True
        log.info("chat_draining")
