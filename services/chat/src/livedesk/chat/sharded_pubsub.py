"""Sharded pub/sub on a Redis Cluster: each channel subscribed on the node that owns its slot.

With SPUBLISH a message only travels to the node that owns the channel's
slot (plain PUBLISH is broadcast over the cluster bus to every node), so
subscribers must SSUBSCRIBE there. redis-py's cluster client routes the
commands; this is the receiving side: one connection per node that owns a
subscribed channel, one SSUBSCRIBE/SUNSUBSCRIBE per channel (the channels of
one command must share a slot), a reader task per connection. The slot map
is the cluster client's own (``get_node_from_key``).

A subscription is lost in three ways, and all end the same way: the slot
map is read again (CLUSTER SLOTS), each lost channel is subscribed on its
current owner, and ``on_resubscribed(channels)`` names those that are (the
Hub tells their sockets to resync: what was published meanwhile is gone).

- the connection drops (node restart, failover, network cut): its channels;
- the node gives a channel up (a ``sunsubscribe`` we did not ask for): its
  slot moved in a reshard, or the node became a replica;
- SSUBSCRIBE is refused (``MOVED``: the slot map was stale).

Channels not yet placed are retried every ``RETRY_SECONDS``. A connection
that stops answering without being closed (a vanished host sends no RST) is
found by a PING every ``ping_interval`` s that must be answered within
``PING_TIMEOUT`` s.

A node that failed is *unhealthy* until it answers a PING again: joins of
its channels do not wait for it (they are placed, with a resync, once it
answers), and the repairs probe it outside the lock. Otherwise one hung
master would hold every join of the pod, whatever node its channel is on,
for a connect or subscribe timeout at each attempt.

The connections speak RESP2 whatever the cluster client speaks: there,
everything a subscribed connection receives is an array in arrival order,
replies to our commands in the order sent, so an error reply belongs to the
oldest command still owed an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from livedesk.platform.logging import get_logger
from livedesk.platform.tasks import cancel_and_wait

__all__ = ["PING_TIMEOUT", "RETRY_SECONDS", "SUBSCRIBE_TIMEOUT", "ShardedSubscriber"]

log = get_logger("livedesk.chat.sharded_pubsub")

SUBSCRIBE_TIMEOUT = 5.0
"""Seconds a node may take to confirm SSUBSCRIBEs before its connection counts as dead."""
PING_TIMEOUT = 5.0
"""Seconds a node may take to answer the subscriber connection's PING."""
RETRY_SECONDS = 0.5
"""Pause between attempts to place channels that have no node yet (a node down, a failover)."""

_Owed = tuple[bytes, bytes, "asyncio.Future[None]"]


class _Link:
    """One subscriber connection to one node, and the channels subscribed on it."""

    def __init__(self, name: str, connection: Connection) -> None:
        self.name = name
        self.connection = connection
        self.channels: set[str] = set()
        # Answers still owed to our commands, oldest first: (kind, channel, waiter).
        self.owed: deque[_Owed] = deque()
        self.reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()  # the order owed == the order written

    async def send(self, commands: list[tuple[bytes, str, str]]) -> list[asyncio.Future[None]]:
        """Send ``(answer kind, COMMAND, channel)`` commands; futures of their answers."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        async with self._send_lock:
            for kind, _, channel in commands:
                future: asyncio.Future[None] = loop.create_future()
                self.owed.append((kind, channel.encode(), future))
                futures.append(future)
            packed = self.connection.pack_commands(
                (command, channel) if channel else (command,) for _, command, channel in commands
            )
            await self.connection.send_packed_command(packed, check_health=False)
        return futures

    def answer(self, kind: bytes, channel: bytes, error: Exception | None) -> bool:
        """Settle the oldest owed answer if this is it (any error is); whether it was."""
        if not self.owed:
            return False
        want_kind, want_channel, future = self.owed[0]
        if error is None and (kind != want_kind or channel != want_channel):
            return False
        self.owed.popleft()
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        return True

    def fail_owed(self, error: Exception) -> None:
        """The connection is gone: no owed answer will come."""
        while self.owed:
            future = self.owed.popleft()[2]
            if not future.done():
                future.set_exception(error)


class ShardedSubscriber:
    """SSUBSCRIBEs channels on their slot owners and hands their messages to ``on_message``."""

    def __init__(
        self,
        cluster: aioredis.RedisCluster,
        on_message: Callable[[str, str], None],
        on_resubscribed: Callable[[list[str]], None],
        *,
        ping_interval: float = 30.0,
    ) -> None:
        """``cluster`` must be initialized (it has a slot map)."""
        self._cluster = cluster
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._ping_interval = ping_interval
        self._links: dict[str, _Link] = {}
        self._where: dict[str, _Link] = {}  # channel -> the link it is subscribed on
        self._lost: set[str] = set()  # wanted, subscribed nowhere yet
        self._unhealthy: set[str] = set()  # node names that failed and have not answered since
        self._lock = asyncio.Lock()
        self._repair_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self.repairs = 0
        """Repairs that placed lost channels again (each one resynced their sockets)."""

    def nodes(self) -> dict[str, set[str]]:
        """Node name (host:port) -> the channels subscribed there."""
        return {name: set(link.channels) for name, link in self._links.items()}

    @property
    def unhealthy(self) -> frozenset[str]:
        """Nodes that failed and have not answered a PING since."""
        return frozenset(self._unhealthy)

    @property
    def lost(self) -> frozenset[str]:
        """Channels waiting for a node."""
        return frozenset(self._lost)

    async def start(self) -> None:
        """Start the repair and health-check tasks."""
        self._tasks = [
            asyncio.create_task(self._repair(), name="sharded-pubsub-repair"),
            asyncio.create_task(self._ping(), name="sharded-pubsub-ping"),
        ]

    async def stop(self) -> None:
        """Stop the tasks and close every connection."""
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        for link in list(self._links.values()):
            self._drop(link, "stopping")
            await self._close(link)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel``; when its node cannot be reached now, later (with a resync)."""
        async with self._lock:
            if channel in self._where or channel in self._lost:
                return
            self._lost.add(channel)
            await self._place([channel])
            if channel in self._lost:
                self._repair_wanted.set()

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        async with self._lock:
            self._lost.discard(channel)
            link = self._where.pop(channel, None)
            if link is None:
                return
            link.channels.discard(channel)
            if not link.channels:
                # Its last channel: closing the connection unsubscribes it.
                self._drop(link, "idle")
                await self._close(link)
                return
            try:
                futures = await link.send([(b"sunsubscribe", "SUNSUBSCRIBE", channel)])
            except (RedisError, OSError) as exc:
                self._link_failed(link, exc)
                return
            # Nobody waits for the confirmation; an error in it only needs reading.
            futures[0].add_done_callback(_consume)

    async def _place(self, channels: Iterable[str]) -> set[str]:
        """SSUBSCRIBE lost ``channels`` on their owners (lock held): those now subscribed."""
        by_node: dict[str, tuple[ClusterNode, list[str]]] = {}
        for channel in channels:
            try:
                node = self._cluster.get_node_from_key(channel)
            except (RedisError, RedisClusterException) as exc:  # SlotNotCoveredError
                log.warning("sharded_pubsub_slot_uncovered", channel=channel, error=repr(exc))
                continue
            if node is not None and node.name not in self._unhealthy:
                by_node.setdefault(node.name, (node, []))[1].append(channel)
        placed: set[str] = set()
        for node, node_channels in by_node.values():
            placed |= await self._place_on(node, node_channels)
        return placed

    async def _place_on(self, node: ClusterNode, channels: list[str]) -> set[str]:
        link = self._links.get(node.name)
        try:
            if link is None:
                link = await self._open(node)
            for channel in channels:
                self._lost.discard(channel)
                self._where[channel] = link
                link.channels.add(channel)
            futures = await link.send([(b"ssubscribe", "SSUBSCRIBE", c) for c in channels])
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                answers = await asyncio.gather(*futures, return_exceptions=True)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("sharded_pubsub_node_unreachable", node=node.name, error=repr(exc))
            self._unhealthy.add(node.name)
            if link is not None:
                self._link_failed(link, exc)
            self._lost.update(channels)
            return set()
        placed: set[str] = set()
        for channel, answer in zip(channels, answers, strict=True):
            if answer is None and self._where.get(channel) is link:
                placed.add(channel)
            elif isinstance(answer, ResponseError):  # MOVED: our slot map is stale
                log.info("sharded_pubsub_refused", channel=channel, error=repr(answer))
                self._lose(channel)
        return placed

    async def _open(self, node: ClusterNode) -> _Link:
        # The cluster's own connection settings (TLS, auth, timeouts), in RESP2 (module doc).
        connection: Connection = node.connection_class(
            **{**node.connection_kwargs, "protocol": 2, "decode_responses": False}
        )
        await connection.connect()  # type: ignore[no-untyped-call]
        link = _Link(node.name, connection)
        link.reader = asyncio.create_task(self._read(link), name=f"sharded-pubsub-{node.name}")
        self._links[node.name] = link
        return link

    async def _read(self, link: _Link) -> None:
        connection = link.connection
        deliver = self._on_message
        try:
            while True:
                try:
                    reply: Any = await connection.read_response(timeout=math.inf)
                except ResponseError as exc:  # an error answer to our oldest command
                    link.answer(b"", b"", exc)
                    continue
                if isinstance(reply, bytes):  # PING with nothing subscribed: +PONG
                    link.answer(reply.lower(), b"", None)
                    continue
                kind = reply[0]
                if kind == b"smessage":
                    deliver(reply[1].decode(), reply[2].decode())
                elif not link.answer(kind, reply[1], None) and kind == b"sunsubscribe":
                    # Not an answer of ours: the node gave the channel up.
                    channel = reply[1].decode()
                    if self._where.get(channel) is link:
                        log.info("sharded_pubsub_channel_moved", node=link.name, channel=channel)
                        self._lose(channel)
        except (RedisError, OSError) as exc:
            self._link_failed(link, exc)

    def _lose(self, channel: str) -> None:
        link = self._where.pop(channel, None)
        if link is not None:
            link.channels.discard(channel)
        self._lost.add(channel)
        self._repair_wanted.set()

    def _link_failed(self, link: _Link, exc: BaseException) -> None:
        if self._links.get(link.name) is link:
            self._unhealthy.add(link.name)
            log.warning(
                "sharded_pubsub_connection_lost",
                node=link.name,
                channels=len(link.channels),
                error=repr(exc),
            )
            self._drop(link, repr(exc))
            # Closing waits for this reader when called from it: leave that to a task.
            task = asyncio.create_task(self._close(link), name="sharded-pubsub-close")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _drop(self, link: _Link, why: str) -> None:
        """Forget ``link``: its channels are lost, its owed answers fail."""
        if self._links.get(link.name) is link:
            del self._links[link.name]
        for channel in link.channels:
            if self._where.get(channel) is link:
                del self._where[channel]
                self._lost.add(channel)
        link.channels.clear()
        link.fail_owed(RedisConnectionError(f"subscriber connection to {link.name} closed: {why}"))
        if self._lost:
            self._repair_wanted.set()

    async def _close(self, link: _Link) -> None:
        if link.reader is not None and link.reader is not asyncio.current_task():
            await cancel_and_wait(link.reader)
        with contextlib.suppress(RedisError, OSError):
            await link.connection.disconnect()

    async def _repair(self) -> None:
        while True:
            await self._repair_wanted.wait()
            self._repair_wanted.clear()
            failed = False
            try:
                await self._repair_once()
            except Exception:  # the repairs must go on: the next attempt may work
                log.exception("sharded_pubsub_repair_failed")
                failed = True
            if self._lost or failed:
                await asyncio.sleep(RETRY_SECONDS)
                self._repair_wanted.set()

    async def _repair_once(self) -> None:
        try:
            # A fresh slot map: the lost channels' slots may have new owners.
            await self._cluster.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("sharded_pubsub_slot_map_unavailable", error=repr(exc))
        await self._probe_unhealthy()
        async with self._lock:
            self._move_misplaced()
            placed = await self._place(sorted(self._lost))
            for link in [k for k in self._links.values() if not k.channels and not k.owed]:
                self._drop(link, "idle")  # its channels all moved elsewhere
                await self._close(link)
        if placed:
            self.repairs += 1
            log.info("sharded_pubsub_resubscribed", channels=len(placed))
            self._on_resubscribed(sorted(placed))

    async def _probe_unhealthy(self) -> None:
        """Forget the failures of the nodes that answer a PING now (no lock held)."""
        nodes: dict[str, ClusterNode] = {}
        for channel in list(self._lost):
            try:
                node = self._cluster.get_node_from_key(channel)
            except (RedisError, RedisClusterException):  # SlotNotCoveredError
                continue
            if node is not None and node.name in self._unhealthy:
                nodes[node.name] = node
        # A node that owns none of the lost channels (any more) needs no probe.
        self._unhealthy &= set(nodes)
        answers = await asyncio.gather(*(_answers_ping(n) for n in nodes.values()))
        for name, answered in zip(nodes, answers, strict=True):
            if answered:
                self._unhealthy.discard(name)

    def _move_misplaced(self) -> None:
        """Channels whose slot has another owner now (seen in the fresh map) count as lost."""
        for channel, link in list(self._where.items()):
            try:
                node = self._cluster.get_node_from_key(channel)
            except (RedisError, RedisClusterException):  # SlotNotCoveredError
                continue
            if node is not None and node.name != link.name:
                self._lose(channel)
                # The old node no longer sends it; unsubscribing there is only tidiness.

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            for link in list(self._links.values()):
                try:
                    futures = await link.send([(b"pong", "PING", "")])
                    async with asyncio.timeout(PING_TIMEOUT):
                        await futures[0]
                except (RedisError, OSError, TimeoutError) as exc:
                    self._link_failed(link, exc)  # its channels are placed again, resynced


async def _answers_ping(node: ClusterNode) -> bool:
    """Whether ``node`` answers a PING within ``PING_TIMEOUT`` on a connection of its own."""
    connection: Connection = node.connection_class(
        **{**node.connection_kwargs, "protocol": 2, "decode_responses": False}
    )
    try:
        async with asyncio.timeout(PING_TIMEOUT):
            await connection.connect()  # type: ignore[no-untyped-call]
            await connection.send_command("PING")
            await connection.read_response()
    except (RedisError, OSError, TimeoutError):
        return False
    finally:
        with contextlib.suppress(RedisError, OSError):
            await connection.disconnect()
    return True


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as read (nobody else waits for it)."""
    if not future.cancelled():
        future.exception()
