"""A real chat app (aiohttp test server) over real PostgreSQL and Redis, with a seeded tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from livedesk.assignment_client import AssignmentClient
from livedesk.chat.actions import ChatActions
from livedesk.chat.api_support import ChatContext
from livedesk.chat.assignment_link import AssignmentLink
from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.fanout import Hub
from livedesk.chat.service import create_app
from livedesk.chat.settings import ChatSettings
from livedesk.chat.sockets import SocketRegistry
from livedesk.chat.testing import Chat, make_org
from livedesk.chat.ws import WsContext
from livedesk.platform.auth import AuthSettings, load_issuer, load_verifier
from livedesk.platform.health import HealthChecks
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.redis import connect_redis
from livedesk.platform.testing import free_port
from livedesk.platform.testing.servers import Servers


@pytest.fixture
async def chat(
    pg_database: str, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Chat]:
    """A chat app on a fresh database, with two tenants."""
    monkeypatch.setenv("LIVEDESK_ENV", "test")
    monkeypatch.setenv("WS_MESSAGES_PER_SECOND", "50")
    monkeypatch.setenv("WS_MESSAGE_BURST", "20")
    settings = ChatSettings(database_url=pg_database, redis_url=servers.redis_url)
    pool = await open_database(pg_database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    redis = await connect_redis(servers.redis_url)
    hub = Hub(redis)
    await hub.start()
    directory, store = Directory(pool), ConversationStore(pool)
    actions = ChatActions(store, directory, hub, settings.max_message_chars)
    issuer, verifier = load_issuer(AuthSettings()), load_verifier(AuthSettings())
    registry = SocketRegistry(
        settings.ws_connections_per_user,
        settings.ws_messages_per_second * 2,
        settings.ws_message_burst * 2,
    )
    # No assignment server here: calls to it answer "unavailable" (tests/integration has one).
    link = AssignmentLink(
        AssignmentClient(f"127.0.0.1:{free_port()}", timeout=1, retries=0), registry, "test-pod"
    )
    health = HealthChecks()
    health.add("postgres", lambda: pool.fetchval("SELECT 1"))
    app = create_app(
        ChatContext(settings, directory, store, issuer, link),
        actions,
        WsContext(settings, actions, registry, verifier, redis, link.set_status),
        health,
    )
    org, stranger = await make_org(directory, "acme"), await make_org(directory, "globex")
    async with TestClient(TestServer(app)) as client:
        harness = Chat(client, pool, directory, store, issuer, settings, org, stranger, registry)
        try:
            yield harness
        finally:
            for ws in harness.sockets:
                await ws.close()
    await link.client.close()
    await hub.stop()
    await redis.aclose()
    await pool.close()
