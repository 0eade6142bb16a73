"""Chat history reads against a real streaming replica (pg_basebackup -R).

The replica copies the test server when it allows replication connections,
else a private primary the test starts on a free port (the shared server's
configuration is never changed). It is held back with
``pg_wal_replay_pause()`` (WAL still arrives, nothing is applied) to show a
writer reading its own message anyway, then stopped to show it leaves the
rotation while reads keep working.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.models import Conversation
from livedesk.chat.replica_lag import REPLICA_LAG_BYTES, ReplicaLagMonitor
from livedesk.chat.shards import ShardMap, Shards, open_shards
from livedesk.chat.testing import make_org, visitor_says
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, ensure_database, open_database
from livedesk.platform.testing import wait_until
from livedesk.platform.testing.pg_private import NoServerBinaries, private_primary
from livedesk.platform.testing.pg_replica import (
    ReplicationUnavailable,
    StreamingReplica,
    streaming_replica,
)
from livedesk.platform.testing.servers import Servers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
async def replica(
    servers: Servers, pg_databases: Callable[[], Awaitable[str]]
) -> AsyncIterator[tuple[str, StreamingReplica]]:
    """A fresh database on a primary and a streaming replica of that whole server.

    The shared server when it allows replication; else (Debian's pg_hba.conf
    has no ``replication`` line, and its configuration is never changed here)
    a private primary of the tests' own on a free port. Skipped only when no
    PostgreSQL server programs are installed.
    """
    async with AsyncExitStack() as stack:
        try:
            try:
                running = await stack.enter_async_context(streaming_replica(servers.postgres_url))
                dsn = await pg_databases()
            except ReplicationUnavailable:
                primary = await stack.enter_async_context(private_primary())
                dsn = urlunsplit(urlsplit(primary)._replace(path="/chat_replica_test"))
                await ensure_database(dsn)
                running = await stack.enter_async_context(streaming_replica(primary))
        except NoServerBinaries as exc:
            pytest.skip(f"no PostgreSQL server to replicate: {exc}")
        yield dsn, running


async def _replica_seq(pool: asyncpg.Pool, conversation: Conversation) -> int:
    seq: int = await pool.fetchval(
        "SELECT coalesce(max(seq), 0) FROM messages WHERE conversation_id = $1", conversation.id
    )
    return seq


async def test_history_from_the_replica_read_your_writes_while_paused_and_failover(
    replica: tuple[str, StreamingReplica],
) -> None:
    dsn, standby = replica
    database = urlsplit(dsn).path.lstrip("/")
    pool = await open_database(dsn, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    shards: Shards | None = None
    # The test's own look at the replica (outside the store's rotation).
    replica_pool = await open_database(standby.url(database), [])
    try:
        shards = await open_shards(
            ShardMap.single(dsn, standby.url(database)), directory_dsn=dsn, directory_pool=pool
        )
        shards.replica_retry_after = 3600  # once stopped, it stays out for the whole test
        directory = Directory(pool)
        org = await make_org(directory, "acme")
        writer, reader = ConversationStore(pool, shards), ConversationStore(pool, shards)
        visitor = await directory.create_visitor(org.inbox)
        conversation = await writer.create(org.inbox, visitor.id)

        await visitor_says(writer, conversation, "one", "two", "three")

        async def replica_has(seq: int) -> bool:
            return await _replica_seq(replica_pool, conversation) >= seq

        await wait_until(lambda: replica_has(3), timeout=30, what="seq 3 on the replica")

        # History served from the replica.
        page = await reader.messages_before(conversation.id, 4, 50)
        assert [m.body for m in page] == ["one", "two", "three"]
        assert (reader.replica_reads, reader.replica_fallbacks) == (1, 0)

        # Replay paused: WAL arrives, nothing is applied.
        await replica_pool.execute("SELECT pg_wal_replay_pause()")

        async def paused() -> bool:
            state = await replica_pool.fetchval("SELECT pg_get_wal_replay_pause_state()")
            return bool(state == "paused")

        await wait_until(paused, timeout=30, what="replay paused")
        assert await visitor_says(writer, conversation, "four") == [4]
        # Lag measured: WAL outstanding; over the limit, the replica leaves the rotation.
        monitor = ReplicaLagMonitor(shards, max_lag=0.0)
        lag = (await monitor.check_once())[shards.database_of(conversation.id)]
        assert lag is not None
        assert lag > 0
        assert REPLICA_LAG_BYTES.labels(shards.database_of(conversation.id))._value.get() > 0
        assert shards.replica(conversation.id) is None
        monitor.max_lag = 3600.0  # a generous limit: back in rotation, lag still measured
        await monitor.check_once()
        assert shards.replica(conversation.id) is not None
        assert await _replica_seq(replica_pool, conversation) == 3  # held back
        mine = await writer.messages_after(conversation.id, 0, 50)
        assert [m.seq for m in mine] == [1, 2, 3, 4]  # the writer reads its own write
        got = await writer.get(conversation.tenant_id, conversation.id, replica_ok=True)
        assert got.last_seq == 4
        assert writer.replica_fallbacks == 2
        # A reader that says what it has is never served less (fallback to the primary).
        theirs = await reader.messages_after(conversation.id, 0, 50, known_seq=4)
        assert [m.seq for m in theirs] == [1, 2, 3, 4]

        # Replay resumed: the replica catches up and serves the writer too.
        await replica_pool.execute("SELECT pg_wal_replay_resume()")
        await wait_until(lambda: replica_has(4), timeout=30, what="seq 4 on the replica")

        async def caught_up() -> bool:
            return (await monitor.check_once())[shards.database_of(conversation.id)] == 0.0

        monitor.max_lag = 0.0  # even the strictest limit is met once caught up
        await wait_until(caught_up, timeout=30, what="no replica lag")
        assert shards.replica(conversation.id) is not None
        reads = writer.replica_reads
        assert [m.seq for m in await writer.messages_after(conversation.id, 0, 50)] == [1, 2, 3, 4]
        assert writer.replica_reads == reads + 1

        # Replica stopped: one failed query takes it out of rotation; reads keep working.
        standby.stop()
        assert [m.seq for m in await writer.messages_after(conversation.id, 0, 50)] == [1, 2, 3, 4]
        assert writer.replica_errors == 1
        assert shards.replica(conversation.id) is None
        assert [m.seq for m in await reader.messages_before(conversation.id, 5, 50)] == [1, 2, 3, 4]
        got = await reader.get(conversation.tenant_id, conversation.id, replica_ok=True)
        assert got.last_seq == 4
        assert (writer.replica_errors, reader.replica_errors) == (1, 0)
    finally:
        if shards is not None:
            await shards.close(keep=[pool])
        await replica_pool.close()
        await pool.close()
