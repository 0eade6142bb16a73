"""Fixtures of the assignment tests: a private Redis key prefix, a fresh database, an engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from livedesk.assignment.engine import Engine, EngineConfig
from livedesk.assignment.recorder import Recorder
from livedesk.assignment.store import RoutingStore
from livedesk.assignment.testing import EngineKit, delete_prefix
from livedesk.platform.ids import uuid7
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing.servers import Servers

MIGRATIONS = [PLATFORM_MIGRATIONS, "livedesk.assignment.migrations"]


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"test:asg:{uuid7().hex[-12:]}:"


@pytest.fixture
async def redis_client(servers: Servers, key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the shared Redis; this test's keys are deleted afterwards."""
    client = aioredis.Redis.from_url(servers.redis_url)
    yield client
    await delete_prefix(client, key_prefix)
    await client.aclose()


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh, migrated database."""
    pool = await open_database(pg_database, MIGRATIONS, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture
async def kit(
    pool: asyncpg.Pool, redis_client: aioredis.Redis, key_prefix: str
) -> AsyncIterator[EngineKit]:
    """An engine on real Redis and PostgreSQL."""
    store = RoutingStore(redis_client, key_prefix)
    recorder = Recorder(pool, store)
    engine = Engine(pool, store, recorder, EngineConfig(first_reply_sla_seconds=0))
    yield EngineKit(engine, store, recorder, pool)
    await engine.close()
    await recorder.close()
