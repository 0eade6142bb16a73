"""Chat conversations sharded over two databases: placement, a shard move, one relay per shard."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest

from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.index import IndexSync
from livedesk.chat.models import Conversation
from livedesk.chat.shard_move import copy_shard, fence, purge, verify
from livedesk.chat.shards import ShardMap, Shards, open_shards
from livedesk.chat.testing import Org, make_org
from livedesk.platform.bus import Envelope, EventPublisher, connect
from livedesk.platform.bus.outbox import OutboxRelay
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing import wait_until
from livedesk.platform.testing.bus import running_consumer
from livedesk.platform.testing.pytest_plugin import BusNames

pytestmark = pytest.mark.integration

TABLES = ("conversations", "messages", "read_state", "csat", "outbox")


@dataclass
class Cluster:
    directory_pool: asyncpg.Pool
    directory: Directory
    shards: Shards
    store: ConversationStore
    org: Org
    dsns: dict[str, str]
    opened: list[Conversation] = field(default_factory=list)

    async def open(self, database: str) -> Conversation:
        """A conversation (with a new visitor) whose id maps to ``database``."""
        while True:
            visitor = await self.directory.create_visitor(self.org.inbox)
            conversation = await self.store.create(self.org.inbox, visitor.id)
            self.opened.append(conversation)
            if self.shards.database_of(conversation.id) == database:
                return conversation

    async def say(self, conversation: Conversation, *bodies: str) -> list[int]:
        seqs = []
        for body in bodies:
            appended = await self.store.append(
                tenant_id=conversation.tenant_id,
                conversation_id=conversation.id,
                sender_kind="visitor",
                sender_id=conversation.visitor_id,
                guard="visitor",
                body=body,
                client_msg_id=body,
            )
            assert appended is not None
            seqs.append(appended[0].seq)
        return seqs


async def _cluster(
    directory_dsn: str, shard_map: ShardMap, directory_pool: asyncpg.Pool, org: Org
) -> Cluster:
    shards = await open_shards(
        shard_map, directory_dsn=directory_dsn, directory_pool=directory_pool
    )
    store = ConversationStore(directory_pool, shards)
    return Cluster(
        directory_pool, Directory(directory_pool), shards, store, org, dict(shard_map.databases)
    )


@pytest.fixture
async def cluster(pg_databases: Callable[[], Awaitable[str]]) -> AsyncIterator[Cluster]:
    """A directory database and two shard databases (logical shards 0-511, 512-1023)."""
    directory_dsn, db0, db1 = await pg_databases(), await pg_databases(), await pg_databases()
    pool = await open_database(directory_dsn, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    org = await make_org(Directory(pool), "acme")
    shard_map = ShardMap({"db0": db0, "db1": db1}, ((0, 511, "db0"), (512, 1023, "db1")))
    made = await _cluster(directory_dsn, shard_map, pool, org)
    try:
        yield made
    finally:
        await made.shards.close(keep=[pool])
        await pool.close()


async def _count(pool: asyncpg.Pool, table: str, conversation_id: uuid.UUID) -> int:
    if table == "outbox":
        # Envelopes carry the conversation id as text inside the protobuf body.
        count: int = await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE position($1::bytea IN body) > 0",
            str(conversation_id).encode(),
        )
        return count
    column = "id" if table == "conversations" else "conversation_id"
    count = await pool.fetchval(
        f"SELECT count(*) FROM {table} WHERE {column} = $1", conversation_id
    )
    return count


async def test_a_conversations_data_is_all_on_its_shard(cluster: Cluster) -> None:
    for home, away in (("db0", "db1"), ("db1", "db0")):
        conversation = await cluster.open(home)
        assert await cluster.say(conversation, "a", "b", "c") == [1, 2, 3]
        await cluster.store.mark_read(conversation, conversation.visitor_id, 3)
        resolved = await cluster.store.resolve(conversation, conversation.visitor_id, "visitor")
        await cluster.store.submit_csat(resolved, 5, "great")
        here, there = cluster.shards.pool(home), cluster.shards.pool(away)
        assert [await _count(here, t, conversation.id) for t in TABLES] == [1, 3, 1, 1, 6]
        assert [await _count(there, t, conversation.id) for t in TABLES] == [0] * 5
        # Nothing of it on the directory either (it has no such table), but its index entry.
        assert await cluster.directory_pool.fetchval("SELECT to_regclass('conversations')") is None
        assert (
            await cluster.directory_pool.fetchval(
                "SELECT status FROM conversation_index WHERE id = $1", conversation.id
            )
            == "resolved"
        )


async def test_listing_spans_shards_and_the_index_repairs_from_the_shard_queue(
    cluster: Cluster,
) -> None:
    opened = [await cluster.open("db0"), await cluster.open("db1"), await cluster.open("db0")]
    page = await cluster.store.page(cluster.org.tenant.id, limit=200)
    assert {c.id for c in page.items} == {c.id for c in cluster.opened} >= {c.id for c in opened}
    assert [c.id for c in page.items] == sorted((c.id for c in page.items), reverse=True)

    # A change whose write-through to the index was lost (pod died after commit):
    # the index lags, the listing leaves it out of a status filter rather than lie...
    target = opened[1]
    lost_put = cluster.store.index.put

    async def pod_dies(shard: asyncpg.Pool, row: object) -> None:
        return None

    cluster.store.index.put = pod_dies  # type: ignore[method-assign]
    await cluster.store.resolve(target, target.visitor_id, "visitor")
    cluster.store.index.put = lost_put  # type: ignore[method-assign]
    resolved_page = await cluster.store.page(cluster.org.tenant.id, status="resolved")
    queued_page = await cluster.store.page(cluster.org.tenant.id, status="queued")
    assert target.id not in {c.id for c in resolved_page.items + queued_page.items}
    # ...until the shard's queue is replayed.
    assert await IndexSync(cluster.shards, cluster.store.index, interval=1).run_once() == 1
    resolved_page = await cluster.store.page(cluster.org.tenant.id, status="resolved")
    assert [c.id for c in resolved_page.items] == [target.id]
    assert await IndexSync(cluster.shards, cluster.store.index, interval=1).run_once() == 0


async def test_moving_a_logical_shard_keeps_every_message_and_seq(cluster: Cluster) -> None:
    conversation = await cluster.open("db0")
    shard = cluster.shards.map.logical_shard(conversation.id)
    other = await cluster.open("db0")
    while cluster.shards.map.logical_shard(other.id) == shard:
        other = await cluster.open("db0")
    await cluster.say(conversation, *(f"m{i}" for i in range(20)))
    await cluster.store.mark_read(conversation, conversation.visitor_id, 7)
    db0, db1 = cluster.shards.pool("db0"), cluster.shards.pool("db1")

    # 1. copy while live; the conversation goes on meanwhile.
    assert (await copy_shard(db0, db1, shard, 1024))["messages"] == 20
    assert await cluster.say(conversation, "during copy") == [21]
    # 2. fence: writes to that logical shard are refused; other shards go on.
    await fence(db0, shard, 1024)
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
        await cluster.say(conversation, "fenced")
    assert await cluster.say(other, "elsewhere") == [1]
    # 3. copy the rest, 4. verify.
    await copy_shard(db0, db1, shard, 1024)
    assert await verify(db0, db1, shard, 1024) == []
    # 5. switch the map (pods restart with it) and 6. purge the old copy.
    moved = cluster.shards.map.moved(shard, "db1")
    assert moved.database_of(conversation.id) == "db1"
    assert await purge(db0, shard, 1024) == 1
    after = await _cluster("unused", moved, cluster.directory_pool, cluster.org)
    after.shards = Shards(moved, {"db0": db0, "db1": db1})
    after.store = ConversationStore(cluster.directory_pool, after.shards)

    history = await after.store.messages_after(conversation.id, 0, 100)
    assert [m.seq for m in history] == list(range(1, 22))
    assert [m.body for m in history] == [f"m{i}" for i in range(20)] + ["during copy"]
    assert await after.say(conversation, "after move") == [22]  # seq goes on, gap-free
    assert (await after.store.read_states(conversation.id)) == {str(conversation.visitor_id): 7}
    assert await _count(db0, "messages", conversation.id) == 0
    assert await after.say(other, "unfenced") == [2]  # the old database takes writes again
    await after.shards.close(keep=[cluster.directory_pool, db0, db1])


async def test_a_large_shard_is_copied_in_batches_exactly_and_repeatably(
    cluster: Cluster, pg_databases: Callable[[], Awaitable[str]]
) -> None:
    # One logical shard holding everything on db0 (logical_shards=1): seven
    # conversations in rounds of two, so every round boundary is crossed.
    conversations = [await cluster.open("db0") for _ in range(7)]
    for n, conversation in enumerate(conversations):
        await cluster.say(conversation, *(f"c{n}m{i}" for i in range(n + 1)))
    await cluster.store.mark_read(conversations[3], conversations[3].visitor_id, 2)
    db0 = cluster.shards.pool("db0")
    on_db0 = await db0.fetchval("SELECT count(*) FROM conversations")
    fresh = await open_database(await pg_databases(), [PLATFORM_MIGRATIONS])
    try:
        copied = await copy_shard(db0, fresh, 0, 1, batch=2)
        assert copied["conversations"] == on_db0 >= 7
        assert copied["messages"] == await db0.fetchval("SELECT count(*) FROM messages")
        assert await verify(db0, fresh, 0, 1) == []
        # Run again (a resumed or repeated copy): nothing doubles, still identical.
        await cluster.say(conversations[0], "later")
        await copy_shard(db0, fresh, 0, 1, batch=3)
        assert await verify(db0, fresh, 0, 1) == []
        assert await _count(fresh, "messages", conversations[0].id) == 2
    finally:
        await fresh.close()
    with pytest.raises(ValueError, match="batch"):
        await copy_shard(db0, db0, 0, 1, batch=0)


async def test_each_shard_has_its_own_relay_and_they_publish_independently(
    cluster: Cluster, bus_names: BusNames
) -> None:
    on_db0, on_db1 = await cluster.open("db0"), await cluster.open("db1")
    await cluster.say(on_db0, "zero")
    await cluster.say(on_db1, "one")
    seen: list[str] = []

    async def handler(env: Envelope) -> None:
        seen.append(env.conversation_id)

    async def publisher() -> EventPublisher:
        connection = await connect(bus_names.amqp_url, "test-relay")
        return await EventPublisher.create(connection, bus_names.exchange, 5, owns_connection=True)

    consumer_conn = await connect(bus_names.amqp_url, "test-consumer")
    relays = {
        name: OutboxRelay(dsn, publisher, poll_interval=0.05) for name, dsn in cluster.dsns.items()
    }
    try:
        async with running_consumer(
            consumer_conn, bus_names, handler, types=("conversation.created", "message.created")
        ):
            relays["db1"].start()  # db0's relay is down: db1's events still go out
            await wait_until(lambda: _async(seen.count(str(on_db1.id)) == 2), what="db1 events")
            assert str(on_db0.id) not in seen
            pending = await _count(cluster.shards.pool("db0"), "outbox", on_db0.id)
            assert pending == 2
            relays["db0"].start()
            await wait_until(lambda: _async(seen.count(str(on_db0.id)) == 2), what="db0 events")
    finally:
        for relay in relays.values():
            await relay.stop(2)
        await consumer_conn.close()


async def _async(value: bool) -> bool:
    return value


async def test_replica_reads_return_what_the_writer_just_wrote(
    cluster: Cluster, pg_databases: Callable[[], Awaitable[str]]
) -> None:
    # A "replica" we control: a database we copy db0's shard rows into on demand,
    # so it lags exactly as much as the test says (a streaming replica would too).
    replica = await open_database(await pg_databases(), [PLATFORM_MIGRATIONS])
    db0 = cluster.shards.pool("db0")
    conversation = await cluster.open("db0")
    shard = cluster.shards.map.logical_shard(conversation.id)
    with_replica = ShardMap(cluster.shards.map.databases, cluster.shards.map.ranges)
    pools = {"db0": db0, "db1": cluster.shards.pool("db1")}
    writer = ConversationStore(
        cluster.directory_pool, Shards(with_replica, pools, {"db0": replica})
    )
    other_pod = ConversationStore(
        cluster.directory_pool, Shards(with_replica, pools, {"db0": replica})
    )
    try:
        await copy_shard(db0, replica, shard, 1024)  # replica has the conversation, no messages
        await writer.append(
            tenant_id=conversation.tenant_id,
            conversation_id=conversation.id,
            sender_kind="visitor",
            sender_id=conversation.visitor_id,
            guard="visitor",
            body="just written",
            client_msg_id=None,
        )
        # The writer reads its write (the replica lags: served by the primary).
        mine = await writer.messages_after(conversation.id, 0, 50)
        assert [m.body for m in mine] == ["just written"]
        got = await writer.get(conversation.tenant_id, conversation.id, replica_ok=True)
        assert got.last_seq == 1
        assert writer.replica_fallbacks == 2
        # A reader knowing nothing newer is served by the (lagging) replica...
        assert await other_pod.messages_after(conversation.id, 0, 50) == []
        assert other_pod.replica_reads == 1
        # ...unless it says what it already has (e.g. the seq of its own ack).
        theirs = await other_pod.messages_after(conversation.id, 0, 50, known_seq=1)
        assert [m.seq for m in theirs] == [1]
        # Once the replica caught up, it serves the writer too.
        await copy_shard(db0, replica, shard, 1024)
        assert [m.seq for m in await writer.messages_after(conversation.id, 0, 50)] == [1]
        assert [m.seq for m in await writer.messages_before(conversation.id, 2, 50)] == [1]
        assert writer.replica_reads == 2
    finally:
        await replica.close()
