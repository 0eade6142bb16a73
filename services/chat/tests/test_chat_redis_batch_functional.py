"""CommandBatcher: concurrent Redis commands share round trips; each caller gets its own reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from livedesk.chat.redis_batch import CommandBatcher
from livedesk.platform.ids import uuid7
from livedesk.platform.redis import connect_redis
from livedesk.platform.testing.servers import Servers

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(servers: Servers) -> AsyncIterator[aioredis.Redis]:
    client = await connect_redis(servers.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_concurrent_commands_share_round_trips_in_order(redis: aioredis.Redis) -> None:
    batcher = CommandBatcher(redis, timeout=5)
    key = f"test:batch:{uuid7().hex}"
    try:
        replies = await asyncio.gather(*(batcher.execute("RPUSH", key, i) for i in range(50)))
        assert replies == list(range(1, 51))  # each caller got its own reply
        assert batcher.commands == 50
        assert batcher.round_trips < 50
        # Issued in order, applied in order.
        assert await redis.lrange(key, 0, -1) == [str(i).encode() for i in range(50)]
    finally:
        await redis.delete(key)


async def test_a_failing_command_fails_only_its_caller(redis: aioredis.Redis) -> None:
    batcher = CommandBatcher(redis, timeout=5)
    key = f"test:batch:{uuid7().hex}"
    try:
        results = await asyncio.gather(
            batcher.execute("SET", key, "a"),
            batcher.execute("EVALSHA", "0" * 40, 0),
            batcher.execute("GET", key),
            return_exceptions=True,
        )
        assert results[0] is True
        assert isinstance(results[1], NoScriptError)
        assert results[2] == b"a"
    finally:
        await redis.delete(key)
