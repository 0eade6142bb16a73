"""A read replica that stops answering leaves the rotation; reads keep working.

The "replica" is the test database itself reached through a TcpProxy, so it
is always fresh and can be cut at will (the streaming replica version of
this is tests/integration/test_chat_replica_streaming.py).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.shards import ShardMap, open_shards
from livedesk.chat.testing import make_org, visitor_says
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing import TcpProxy


async def test_a_failed_replica_is_taken_out_of_rotation_and_reads_keep_working(
    pg_database: str,
) -> None:
    parts = urlsplit(pg_database)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    pool = await open_database(pg_database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    shards = await open_shards(
        ShardMap.single(pg_database, via_proxy), directory_dsn=pg_database, directory_pool=pool
    )
    try:
        directory = Directory(pool)
        org = await make_org(directory, "acme")
        store = ConversationStore(pool, shards)
        visitor = await directory.create_visitor(org.inbox)
        conversation = await store.create(org.inbox, visitor.id)
        assert await visitor_says(store, conversation, "hello") == [1]
        assert [m.seq for m in await store.messages_after(conversation.id, 0, 50)] == [1]
        assert store.replica_reads == 1

        proxy.cut()
        assert [m.seq for m in await store.messages_after(conversation.id, 0, 50)] == [1]
        assert store.replica_errors == 1
        assert shards.replica(conversation.id) is None  # out of rotation
        got = await store.get(conversation.tenant_id, conversation.id, replica_ok=True)
        assert got.last_seq == 1
        assert [m.seq for m in await store.messages_before(conversation.id, 2, 50)] == [1]
        assert store.replica_errors == 1  # not asked again while out

        proxy.heal()
        shards.replica_retry_after = 0
        shards.replica_failed(conversation.id)  # the window ends now: back in rotation
        assert shards.replica(conversation.id) is not None
        assert [m.seq for m in await store.messages_after(conversation.id, 0, 50)] == [1]
        assert store.replica_reads == 2
    finally:
        await shards.close(keep=[pool])
        await pool.close()
        await proxy.close()
