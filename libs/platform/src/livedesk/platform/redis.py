"""Redis client creation with a start-up check."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from livedesk.platform.errors import DependencyError

__all__ = ["connect_redis"]


async def connect_redis(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A pooled client for ``url``; DependencyError when Redis does not answer PING.

    The pool blocks (up to 5 s) for a free connection instead of failing: a
    burst of thousands of socket handshakes must queue, not error.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    # from_pool: the client owns the pool, so aclose() also closes its connections.
    client = aioredis.Redis.from_pool(pool)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise DependencyError(f"Redis unreachable: {exc!r}") from exc
    return client
