"""Redis client creation with a start-up check: one server, or a Redis Cluster."""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from livedesk.platform.errors import DependencyError

__all__ = ["AnyRedis", "QueueingRedisCluster", "connect_redis", "connect_redis_cluster"]

AnyRedis: TypeAlias = aioredis.Redis | aioredis.RedisCluster
"""A client of one Redis server or of a Redis Cluster (both take the same commands)."""


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


class QueueingRedisCluster(aioredis.RedisCluster):
    """A cluster client whose commands queue (up to ``queue_timeout`` s) past ``limit`` in flight.

    redis-py's cluster client has no blocking pool: past ``max_connections``
    to a node it raises MaxConnectionsError at once. Commands wait for one of
    ``limit`` slots here instead, as :func:`connect_redis`'s blocking pool
    makes them wait for a connection; pipelines do not take a slot (each is
    one connection per node, and redis-py retries their redirected commands
    through ``execute_command``, which does).
    """

    def __init__(self, *args: Any, limit: int = 64, queue_timeout: float = 5.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._in_flight = asyncio.Semaphore(limit)
        self._queue_timeout = queue_timeout

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run a command once fewer than ``limit`` are in flight."""
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._in_flight.acquire()
        except TimeoutError:
            raise RedisConnectionError("No connection available.") from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._in_flight.release()


async def connect_redis_cluster(url: str, max_connections: int = 64) -> QueueingRedisCluster:
    """A Redis Cluster client from one node's ``url``; DependencyError when it cannot start.

    The client reads the slot map from that node (CLUSTER SLOTS), then talks
    to each node directly and follows MOVED/ASK redirections. At most
    ``max_connections`` commands are in flight at once (more wait, as with
    :func:`connect_redis`); each node's pool has room for them and for the
    pipelines besides.
    """
    client = cast(
        QueueingRedisCluster,  # from_url builds the class it is called on
        QueueingRedisCluster.from_url(
            url,
            limit=max_connections,
            max_connections=max_connections + 16,
            socket_connect_timeout=5,
            socket_timeout=5,
        ),
    )
    try:
        _ = await client.initialize()
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise DependencyError(f"Redis Cluster unreachable: {exc!r}") from exc
    return client
