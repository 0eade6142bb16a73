"""Fan-out between chat pods on a Redis Cluster: sharded pub/sub (SPUBLISH / SSUBSCRIBE).

The same Hub as on one Redis server (join, leave, publish, deliver_local),
with the channels sharded: a frame is published to, and received from, the
node that owns its channel's slot only, so fan-out traffic spreads over the
cluster's nodes instead of crossing every node's bus
(livedesk.chat.sharded_pubsub). Subscriptions lost to a reshard, a failover
or a cut connection are placed again on the slot's owner, and the sockets
of those channels get a resync frame, as after a lost subscriber
connection on one server.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from livedesk.chat.fanout import PUBLISH_TIMEOUT, Hub, Listener, log
from livedesk.chat.redis_batch import CommandBatcher
from livedesk.chat.sharded_pubsub import ShardedSubscriber

__all__ = ["ClusterHub"]


class ClusterHub(Hub):
    """A :class:`Hub` over a Redis Cluster."""

    def __init__(self, cluster: aioredis.RedisCluster, *, ping_interval: float = 30.0) -> None:
        """``cluster`` must be initialized (it has a slot map)."""
        # Not Hub.__init__, which opens a pub/sub connection to one server;
        # the listener registry (join, leave, deliver_local) is Hub's own.
        self._publisher = CommandBatcher(cluster, timeout=PUBLISH_TIMEOUT)
        self._listeners: dict[str, Listener | set[Listener]] = {}
        self._task = None
        self._lock = asyncio.Lock()
        self.subscriber = ShardedSubscriber(
            cluster, self.deliver_local, self._resync, ping_interval=ping_interval
        )

    async def start(self) -> None:
        """Start the subscriber's repair and health checks (connections open on demand)."""
        await self.subscriber.start()

    async def stop(self) -> None:
        """Close the subscriber connections."""
        await self.subscriber.stop()

    async def publish(self, channel: str, frame: str) -> None:
        """Send ``frame`` to every pod listening on ``channel`` (at most once)."""
        try:
            await self._publisher.execute("SPUBLISH", channel, frame)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            # Clients recover the message through seq gaps; log and carry on.
            log.warning("fanout_publish_failed", channel=channel, error=repr(exc))

    async def _subscribe(self, channel: str) -> None:
        await self.subscriber.subscribe(channel)

    async def _unsubscribe(self, channel: str) -> None:
        await self.subscriber.unsubscribe(channel)
