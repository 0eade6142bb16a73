"""Chat on a real Redis Cluster (three masters started here): sharded fan-out and the hot cache.

Two ClusterHubs with cluster clients of their own stand for two pods. The
faults are real: subscriber connections killed on their node (CLIENT KILL),
a channel's slot moved to another node (as a reshard does), a client whose
slot map is stale.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import MaxConnectionsError, ResponseError

from livedesk.chat import sharded_pubsub
from livedesk.chat.fanout import RESYNC_FRAME, conversation_channel
from livedesk.chat.fanout_cluster import ClusterHub
from livedesk.chat.hot_cache import HotCache, open_hot_cache
from livedesk.chat.models import Message
from livedesk.chat.redis_batch import CommandBatcher
from livedesk.chat.settings import ChatSettings
from livedesk.platform.ids import uuid7
from livedesk.platform.redis import QueueingRedisCluster, connect_redis_cluster
from livedesk.platform.testing import wait_until
from livedesk.platform.testing.redis_cluster import (
    ClusterNodeProcess,
    RedisClusterProcesses,
    redis_cluster,
)

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="needs redis-server and redis-cli",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    """One cluster for the module (it takes seconds to form); tests only add to it."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
async def pods(cluster: RedisClusterProcesses) -> AsyncIterator[tuple[ClusterHub, ClusterHub]]:
    """Two hubs, each with its own cluster client: two pods."""
    clients = [await connect_redis_cluster(cluster.url) for _ in range(2)]
    hubs = (ClusterHub(clients[0]), ClusterHub(clients[1]))
    for hub in hubs:
        await hub.start()
    yield hubs
    for hub in hubs:
        await hub.stop()
    for client in clients:
        await client.aclose()


class Inbox:
    """A listener that keeps what it is given."""

    def __init__(self) -> None:
        self.frames: list[str] = []

    def deliver(self, frame: str) -> None:
        self.frames.append(frame)

    def data(self) -> list[str]:
        return [f for f in self.frames if f != RESYNC_FRAME]

    def resyncs(self) -> int:
        return self.frames.count(RESYNC_FRAME)


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` (with a deadline) until it holds."""

    async def probe() -> bool:
        return check()

    await wait_until(probe, what=what)


async def _channel_per_node(cluster: RedisClusterProcesses) -> dict[int, str]:
    """A conversation channel on each node (by port)."""
    found: dict[int, str] = {}
    while len(found) < len(cluster.nodes):
        channel = conversation_channel(uuid.uuid4())
        found.setdefault((await cluster.owner(channel)).port, channel)
    return found


async def _keyless_channel(cluster: RedisClusterProcesses) -> tuple[str, ClusterNodeProcess]:
    """A channel whose slot holds no keys (so it can be moved), and its owner."""
    while True:
        channel = conversation_channel(uuid.uuid4())
        owner = await cluster.owner(channel)
        async with aioredis.Redis(port=owner.port) as node:
            if not await node.cluster("COUNTKEYSINSLOT", key_slot(channel.encode())):
                return channel, owner


async def test_two_pods_exchange_frames_on_channels_of_every_node(
    cluster: RedisClusterProcesses, pods: tuple[ClusterHub, ClusterHub]
) -> None:
    pod_a, pod_b = pods
    channels = await _channel_per_node(cluster)
    inbox_a = {port: Inbox() for port in channels}
    inbox_b = {port: Inbox() for port in channels}
    for port, channel in channels.items():
        await pod_a.join(channel, inbox_a[port])
        await pod_b.join(channel, inbox_b[port])
    # Sharded: each channel is subscribed on its slot's owner, by both pods, and nowhere else.
    for port, channel in channels.items():
        for node in cluster.nodes:
            expected = 2 if node.port == port else 0
            assert await cluster.subscriber_count(node, channel) == expected
    assert {name.split(":")[1] for name in pod_a.subscriber.nodes()} == {
        str(port) for port in channels
    }

    sends = []
    for i in range(20):
        for channel in channels.values():
            sends.append(pod_a.publish(channel, f"a{i}"))
            sends.append(pod_b.publish(channel, f"b{i}"))
    await asyncio.gather(*sends)

    every = [*inbox_a.values(), *inbox_b.values()]
    await until(lambda: all(len(box.data()) == 40 for box in every), "every frame everywhere")
    for box in every:
        # Each pod's frames arrive in the order it published them.
        assert [f for f in box.data() if f[0] == "a"] == [f"a{i}" for i in range(20)]
        assert [f for f in box.data() if f[0] == "b"] == [f"b{i}" for i in range(20)]
        assert box.resyncs() == 0

    # The last local listener leaving unsubscribes this pod on the owner.
    port, channel = next(iter(channels.items()))
    await pod_b.leave(channel, inbox_b[port])
    assert await cluster.subscriber_count(cluster.node(port), channel) == 1


async def _listen_on_every_node(
    cluster: RedisClusterProcesses, pod: ClusterHub
) -> tuple[dict[int, str], dict[int, Inbox]]:
    """A channel on each node (by port), each joined by ``pod`` with an inbox of its own."""
    channels = await _channel_per_node(cluster)
    inboxes = {port: Inbox() for port in channels}
    for port, channel in channels.items():
        await pod.join(channel, inboxes[port])
    return channels, inboxes


async def _recovered_alone(
    cluster: RedisClusterProcesses,
    publisher: ClusterHub,
    inboxes: dict[int, Inbox],
    node: ClusterNodeProcess,
    channel: str,
) -> None:
    """``channel`` of ``node`` is subscribed there once more and carries frames again;
    the sockets of the other nodes' channels lost nothing (no resync)."""
    assert await cluster.subscriber_count(node, channel) == 1
    assert [b.resyncs() for p, b in inboxes.items() if p != node.port] == [0, 0]
    await publisher.publish(channel, "recovered")
    await until(lambda: inboxes[node.port].data() == ["recovered"], "a frame after the resync")


async def test_killed_subscriber_connection_resubscribes_and_resyncs(
    cluster: RedisClusterProcesses, pods: tuple[ClusterHub, ClusterHub]
) -> None:
    pod_a, pod_b = pods
    channels, inboxes = await _listen_on_every_node(cluster, pod_a)
    cut_port, cut_channel = next(iter(channels.items()))
    cut = cluster.node(cut_port)
    repairs = pod_a.subscriber.repairs

    assert await cluster.kill_clients(cut) >= 1  # pod A's subscriber connection there

    box = inboxes[cut_port]
    await until(lambda: box.resyncs() == 1, "resync after the cut")
    assert pod_a.subscriber.repairs == repairs + 1
    await _recovered_alone(cluster, pod_b, inboxes, cut, cut_channel)


async def test_a_restarted_node_gets_its_channels_back(
    cluster: RedisClusterProcesses, pods: tuple[ClusterHub, ClusterHub]
) -> None:
    pod_a, pod_b = pods
    channels, inboxes = await _listen_on_every_node(cluster, pod_a)
    port, channel = next(iter(channels.items()))
    node = cluster.node(port)

    cluster.stop(node)
    await until(lambda: channel in pod_a.subscriber.lost, "the channel lost with its node")
    await cluster.start(node)  # same ports and cluster config: it serves its slots again

    await until(lambda: inboxes[port].resyncs() == 1, "resync once the node is back")
    await _recovered_alone(cluster, pod_b, inboxes, node, channel)


async def test_channel_whose_slot_moves_follows_it_to_the_new_owner(
    cluster: RedisClusterProcesses, pods: tuple[ClusterHub, ClusterHub]
) -> None:
    pod_a, pod_b = pods
    channel, old = await _keyless_channel(cluster)
    new = next(n for n in cluster.nodes if n is not old)
    box = Inbox()
    await pod_a.join(channel, box)
    assert await cluster.subscriber_count(old, channel) == 1

    # A reshard: the old owner drops the subscription (a sunsubscribe push).
    await cluster.move_slot(key_slot(channel.encode()), new)

    await until(lambda: box.resyncs() == 1, "resync after the move")
    assert await cluster.subscriber_count(new, channel) == 1
    assert await cluster.subscriber_count(old, channel) == 0
    # Pod B's client still has the old slot map: its SPUBLISH is redirected (MOVED).
    await pod_b.publish(channel, "after the move")
    await until(lambda: box.data() == ["after the move"], "frame after move")


async def test_join_with_a_stale_slot_map_is_redirected(
    cluster: RedisClusterProcesses, pods: tuple[ClusterHub, ClusterHub]
) -> None:
    pod_a, pod_b = pods
    channel, old = await _keyless_channel(cluster)
    new = next(n for n in cluster.nodes if n is not old)
    # Moved after pod A read its slot map: its SSUBSCRIBE goes to the old owner (MOVED).
    await cluster.move_slot(key_slot(channel.encode()), new)
    box = Inbox()
    await pod_a.join(channel, box)

    await until(lambda: box.resyncs() == 1, "resync once subscribed")
    assert await cluster.subscriber_count(new, channel) == 1
    await pod_b.publish(channel, "found it")
    await until(lambda: box.data() == ["found it"], "frame after redirect")


async def test_a_node_that_stops_answering_is_found_by_ping(
    cluster: RedisClusterProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharded_pubsub, "PING_TIMEOUT", 0.3)
    client = await connect_redis_cluster(cluster.url)
    pod = ClusterHub(client, ping_interval=0.2)
    await pod.start()
    try:
        channel, node = await _keyless_channel(cluster)
        box = Inbox()
        await pod.join(channel, box)
        # The connection stays open but unanswered, as with a host gone without a reset.
        await cluster.pause(node, 1500)
        await until(lambda: box.resyncs() == 1, "resync after the unanswered PING")
        assert pod.subscriber.repairs == 1
        await pod.publish(channel, "still here")
        await until(lambda: box.data() == ["still here"], "frame after the pause")
    finally:
        await pod.stop()
        await client.aclose()


async def test_a_hung_node_does_not_hold_the_joins_of_the_pod(
    cluster: RedisClusterProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A subscribe that waited for the hung node would overrun the bound below;
    # the repairs' PING probes stay short.
    monkeypatch.setattr(sharded_pubsub, "SUBSCRIBE_TIMEOUT", 3.0)
    monkeypatch.setattr(sharded_pubsub, "PING_TIMEOUT", 0.3)
    client = await connect_redis_cluster(cluster.url)
    pod = ClusterHub(client, ping_interval=60)
    await pod.start()
    try:
        # Not the first node: the fixture and the client's slot map ask that one.
        hung = cluster.nodes[1]
        first: list[str] = []
        second: list[str] = []
        while not (first and second):
            channel = conversation_channel(uuid.uuid4())
            if (await cluster.owner(channel)).port == hung.port:
                (second if first else first).append(channel)
        elsewhere = [c for p, c in (await _channel_per_node(cluster)).items() if p != hung.port]
        boxes = {c: Inbox() for c in [*first, *second, *elsewhere]}
        await cluster.pause(hung, 8_000)  # connections open, nothing answered
        await pod.join(first[0], boxes[first[0]])  # waits for it this once
        assert [n for n in pod.subscriber.unhealthy if n.endswith(f":{hung.port}")]
        # Another channel of the hung node, and channels elsewhere: none waits.
        async with asyncio.timeout(1.5):
            await pod.join(second[0], boxes[second[0]])
            for channel in elsewhere:
                await pod.join(channel, boxes[channel])
        assert {first[0], second[0]} <= pod.subscriber.lost
        for channel in elsewhere:
            await pod.publish(channel, "live")
        await until(
            lambda: all(boxes[c].data() == ["live"] for c in elsewhere),
            "frames on the healthy nodes while one hangs",
        )
        # Once the pause ends, both channels are placed and their sockets resync.
        await until(
            lambda: boxes[first[0]].resyncs() == 1 and boxes[second[0]].resyncs() == 1,
            "resync once the node answers again",
        )
        assert not pod.subscriber.unhealthy
        await pod.publish(second[0], "back")
        await until(lambda: boxes[second[0]].data() == ["back"], "frame from the node that hung")
    finally:
        await pod.stop()
        await client.aclose()


async def test_command_batcher_pipelines_span_the_nodes_in_order(
    cluster: RedisClusterProcesses,
) -> None:
    client = await connect_redis_cluster(cluster.url)
    batcher = CommandBatcher(client, timeout=5)
    tag = uuid7().hex[-12:]
    keys = [f"test:{tag}:{i}" for i in range(30)]
    assert len({(await cluster.owner(k)).port for k in keys}) == len(cluster.nodes)
    try:
        await client.set(keys[0], "not a number")
        replies = await asyncio.gather(
            *(batcher.execute("RPUSH", f"{k}:list", i) for k in keys[1:] for i in range(3)),
            *(batcher.execute("INCR", k) for k in keys),
            return_exceptions=True,
        )
        # Each caller gets its own reply, the failing command fails only its caller.
        assert replies[:87] == [1, 2, 3] * 29
        assert isinstance(replies[87], ResponseError)
        assert replies[88:] == [1] * 29
        assert batcher.round_trips < batcher.commands
        # Applied in the order issued (per key: on one node, in one connection's order).
        assert await client.lrange(f"{keys[1]}:list", 0, -1) == [b"0", b"1", b"2"]
    finally:
        for k in keys:
            await client.delete(k)
            await client.delete(f"{k}:list")
        await client.aclose()


async def test_commands_past_the_limit_queue_instead_of_failing(
    cluster: RedisClusterProcesses,
) -> None:
    key = f"test:{uuid7().hex[-12:]}:queue"
    # redis-py's own client: past max_connections to a node, MaxConnectionsError at once.
    plain = aioredis.RedisCluster.from_url(cluster.url, max_connections=4)
    queueing = QueueingRedisCluster.from_url(cluster.url, limit=4, max_connections=4)
    try:
        burst = await asyncio.gather(*(plain.incr(key) for _ in range(200)), return_exceptions=True)
        assert any(isinstance(r, MaxConnectionsError) for r in burst)
        before = int(await queueing.get(key) or 0)
        await asyncio.gather(*(queueing.incr(key) for _ in range(200)))
        assert int(await queueing.get(key) or 0) == before + 200
    finally:
        await queueing.delete(key)
        await plain.aclose()
        await queueing.aclose()


def _message(conversation_id: uuid.UUID, seq: int) -> Message:
    return Message(
        conversation_id, seq, uuid7(), uuid.UUID(int=1), "visitor", None, f"m{seq}", None,
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )  # fmt: skip


async def test_hot_cache_on_the_cluster(cluster: RedisClusterProcesses, tmp_path: Path) -> None:
    client = await connect_redis_cluster(cluster.url)
    prefix = f"test:{uuid7().hex[-12:]}:hot:"
    cache = HotCache(client, prefix=prefix, ttl=120)
    # Conversations until every node holds some: the scripts run on each.
    conversations: list[uuid.UUID] = []
    owners: set[int] = set()
    while len(owners) < len(cluster.nodes) or len(conversations) < 6:
        cid = uuid.uuid4()
        conversations.append(cid)
        owners.add((await cluster.owner(cache.key(cid))).port)
    try:
        for cid in conversations:
            # The set and its tombstone share a slot (the id is their hash tag).
            assert key_slot(cache.key(cid).encode()) == key_slot(f"{cache.key(cid)}:gone".encode())
        # Concurrent write-throughs share pipelines that span the nodes.
        await asyncio.gather(
            *(cache.add(_message(cid, seq)) for seq in range(1, 11) for cid in conversations)
        )
        assert cache.stats.write_errors == 0
        assert cache.stats.writes == 10 * len(conversations)
        assert cache._writes.round_trips < cache._writes.commands
        for cid in conversations:
            got = await cache.read(cid, 3, 8, known=10)
            assert got is not None
            assert [(m.seq, m.body) for m in got] == [(s, f"m{s}") for s in range(3, 9)]
        # Invalidation: the copy is gone and in-flight write-throughs are refused.
        gone = conversations[0]
        await cache.invalidate(gone)
        assert await cache.read(gone, 1, 10, known=10) is None
        await cache.add(_message(gone, 11))
        assert await client.exists(cache.key(gone)) == 0
        assert cache.stats.read_errors == 0

        # HOT_CACHE_REDIS_URL with REDIS_CLUSTER: a cluster client of its own, ready at once.
        settings = ChatSettings(
            redis_cluster=True, redis_url=cluster.url, hot_cache_redis_url=cluster.url
        )
        own = open_hot_cache(settings, client)
        assert own is not None
        assert isinstance(own.redis, aioredis.RedisCluster)
        assert own.redis is not client
        fresh = uuid.uuid4()
        try:
            for seq in (1, 2, 3):
                await own.add(_message(fresh, seq))
            got = await own.read(fresh, 1, 3, known=3)
            assert got is not None
            assert [m.seq for m in got] == [1, 2, 3]
        finally:
            await own.redis.delete(own.key(fresh))
            await own.redis.aclose()
    finally:
        for cid in conversations:
            await client.delete(cache.key(cid), f"{cache.key(cid)}:gone")
        await client.aclose()
