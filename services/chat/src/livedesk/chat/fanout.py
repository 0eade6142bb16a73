"""Fan-out between chat pods over Redis pub/sub, and the pod-local socket registry.

One Redis subscriber connection per pod carries every channel any local
socket listens to; a frame published by any pod reaches every pod with a
listener, which hands the same text to each local socket's send queue.
Pub/sub is at-most-once: clients detect gaps by ``seq`` and fetch them
(docs/protocol.md), so a lost publish delays a message but never loses it.
On a Redis Cluster (REDIS_CLUSTER) the pod runs livedesk.chat.fanout_cluster's
ClusterHub instead: the same Hub over sharded pub/sub.

Channels: ``ld:c:{conversation_id}`` (a conversation's participants) and,
for the consoles, lifecycle notices scoped to who may see them:
``ld:t:{tenant}:admins``, ``ld:t:{tenant}:team:{team_id|none}`` (a team's
queue) and ``ld:t:{tenant}:agent:{agent_id}`` (an agent's own conversations).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from livedesk.chat.redis_batch import CommandBatcher
from livedesk.platform.logging import get_logger
from livedesk.platform.tasks import cancel_and_wait

__all__ = [
    "RESYNC_FRAME",
    "Hub",
    "Listener",
    "console_channels",
    "conversation_channel",
    "staff_channels",
]

RESYNC_FRAME = '{"type":"resync"}'
PUBLISH_TIMEOUT = 5.0
"""Seconds a round trip of publishes may take before they count as lost."""


log = get_logger("livedesk.chat.fanout")


def conversation_channel(conversation_id: uuid.UUID) -> str:
    """The channel of one conversation's participants."""
    return f"ld:c:{conversation_id}"


def staff_channels(
    tenant_id: uuid.UUID, team_ids: Iterable[uuid.UUID | None], agent_ids: Iterable[uuid.UUID]
) -> list[str]:
    """The console channels a notice about these teams' and agents' conversations goes to.

    Admins see everything; an agent, their own conversations and their teams'
    queues (a conversation of no team is everyone's queue).
    """
    base = f"ld:t:{tenant_id}"
    channels = [f"{base}:admins"]
    channels += [f"{base}:team:{team or 'none'}" for team in set(team_ids)]
    channels += [f"{base}:agent:{agent}" for agent in set(agent_ids)]
    return channels


def console_channels(
    tenant_id: uuid.UUID, role: str, subject_id: uuid.UUID, team_ids: Iterable[uuid.UUID]
) -> list[str]:
    """The console channels a staff member listens to."""
    base = f"ld:t:{tenant_id}"
    if role == "admin":
        return [f"{base}:admins"]
    return [
        f"{base}:agent:{subject_id}",
        f"{base}:team:none",
        *(f"{base}:team:{team}" for team in team_ids),
    ]


class Listener(Protocol):
    """Anything that takes frames (a socket's send queue)."""

    def deliver(self, frame: str) -> None:
        """Queue ``frame``; must not block."""


class Hub:
    """Publishes frames and routes received ones to local listeners."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        # Publishes of concurrent senders share round trips, in the order issued.
        self._publisher = CommandBatcher(redis, timeout=PUBLISH_TIMEOUT)
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)
        # A channel's listener, or a set of them once there are several: most
        # channels (a conversation's) have one socket per pod, and a set costs 200 bytes.
        self._listeners: dict[str, Listener | set[Listener]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the subscriber connection and start routing."""
        # A placeholder subscription opens the connection, so listen() has one to read.
        await self._pubsub.subscribe("ld:hub")
        self._task = asyncio.create_task(self._route(), name="fanout-router")

    async def stop(self) -> None:
        """Stop routing and close the subscriber connection."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def publish(self, channel: str, frame: str) -> None:
        """Send ``frame`` to every pod listening on ``channel`` (at most once)."""
        try:
            await self._publisher.execute("PUBLISH", channel, frame)
        except (RedisError, OSError, TimeoutError) as exc:
            # Clients recover the message through seq gaps; log and carry on.
            log.warning("fanout_publish_failed", channel=channel, error=repr(exc))

    async def join(self, channel: str, listener: Listener) -> None:
        """Deliver ``channel``'s frames to ``listener``."""
        async with self._lock:
            current = self._listeners.get(channel)
            if current is None:
                self._listeners[channel] = listener
                await self._subscribe(channel)
            elif isinstance(current, set):
                current.add(listener)
            elif current is not listener:
                self._listeners[channel] = {current, listener}

    async def leave(self, channel: str, listener: Listener) -> None:
        """Stop delivering ``channel`` to ``listener``."""
        async with self._lock:
            current = self._listeners.get(channel)
            if isinstance(current, set):
                current.discard(listener)
                if len(current) > 1:
                    return
                if current:
                    self._listeners[channel] = current.pop()
                    return
            elif current is None or current is not listener:
                return
            del self._listeners[channel]
            with contextlib.suppress(RedisError, OSError):
                await self._unsubscribe(channel)

    async def _subscribe(self, channel: str) -> None:
        """Start receiving ``channel`` (the first local listener joined; lock held)."""
        await self._pubsub.subscribe(channel)

    async def _unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` (its last local listener left; lock held)."""
        await self._pubsub.unsubscribe(channel)

    def deliver_local(self, channel: str, frame: str) -> None:
        """Hand ``frame`` to this pod's listeners of ``channel``."""
        current = self._listeners.get(channel)
        if isinstance(current, set):
            for listener in tuple(current):
                listener.deliver(frame)
        elif current is not None:
            current.deliver(frame)

    async def _route(self) -> None:
        while True:
            try:
                async for item in self._pubsub.listen():
                    if item.get("type") != "message":
                        continue
                    channel = item["channel"]
                    data = item["data"]
                    self.deliver_local(
                        channel.decode() if isinstance(channel, bytes) else channel,
                        data.decode() if isinstance(data, bytes) else data,
                    )
            except (RedisError, OSError) as exc:
                log.warning("fanout_subscriber_lost", error=repr(exc))
                await asyncio.sleep(0.5)
                await self._resubscribe()

    async def _resubscribe(self) -> None:
        async with self._lock:
            channels = ["ld:hub", *self._listeners]
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.subscribe(*channels)
            self._resync(list(self._listeners))

    def _resync(self, channels: Iterable[str]) -> None:
        """Frames published on ``channels`` while they were not subscribed are gone:
        their local sockets fetch what they missed (by seq) instead of waiting for a gap."""
        listeners: set[Listener] = set()
        for channel in channels:
            current = self._listeners.get(channel)
            if isinstance(current, set):
                listeners |= current
            elif current is not None:
                listeners.add(current)
        for listener in listeners:
            listener.deliver(RESYNC_FRAME)
