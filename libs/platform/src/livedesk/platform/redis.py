"""Redis client creation with a start-up check."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from livedesk.platform.errors import DependencyError

__all__ = ["connect_redis"]


async def connect_redis(url: str) -> aioredis.Redis:
    """A pooled client for ``url``; DependencyError when Redis does not answer PING."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise DependencyError(f"Redis unreachable: {exc!r}") from exc
    return client
