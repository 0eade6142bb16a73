"""The hot-message cache (issue 3, item 4) over a real PostgreSQL and a redis-server of its own.

Every read is compared with PostgreSQL's answer: the cache may only make a
read faster, never different. The Redis here is private (flushed on purpose)
and reached through a TcpProxy so it can be made unreachable.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.hot_cache import HotCache
from livedesk.chat.models import Conversation, Message
from livedesk.chat.shards import ShardMap, open_shards
from livedesk.chat.testing import make_org, visitor_says
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing import TcpProxy
from livedesk.platform.testing.redis_server import private_redis

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


@dataclass
class Hot:
    store: ConversationStore  # with the cache
    plain: ConversationStore  # PostgreSQL only: the reference answer
    cache: HotCache
    redis: aioredis.Redis  # direct, for flushing and inspecting
    proxy: TcpProxy  # between the store's cache and Redis
    conversation: Conversation

    async def say(self, *bodies: str) -> list[int]:
        return await visitor_says(self.store, self.conversation, *bodies)

    async def after(self, after_seq: int, limit: int = 50) -> list[Message]:
        """Resume from ``after_seq`` as a WS subscribe does (it knows last_seq); checked exact."""
        cid = self.conversation.id
        last_seq = (await self.plain.get(self.conversation.tenant_id, cid)).last_seq
        got = await self.store.messages_after(cid, after_seq, limit, known_seq=last_seq)
        assert got == await self.plain.messages_after(cid, after_seq, limit)
        return got

    async def before(self, before_seq: int, limit: int = 50) -> list[Message]:
        """A history page ending just before ``before_seq``; checked exact."""
        cid = self.conversation.id
        got = await self.store.messages_before(cid, before_seq, limit)
        assert got == await self.plain.messages_before(cid, before_seq, limit)
        return got


@pytest.fixture
async def hot(pg_database: str, tmp_path: Path) -> AsyncIterator[Hot]:
    pool: asyncpg.Pool = await open_database(
        pg_database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"]
    )
    async with private_redis(tmp_path) as url:
        direct = aioredis.Redis.from_url(url)
        proxy = await TcpProxy("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])).start()
        via_proxy = aioredis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        # retry_after=0: every call tries Redis, so the test sees each outcome.
        cache = HotCache(via_proxy, max_messages=5, ttl=3600, timeout=2, retry_after=0)
        shards = await open_shards(
            ShardMap.single(pg_database), directory_dsn=pg_database, directory_pool=pool
        )
        directory = Directory(pool)
        try:
            org = await make_org(directory, "acme")
            store = ConversationStore(pool, shards, hot=cache)
            visitor = await directory.create_visitor(org.inbox)
            conversation = await store.create(org.inbox, visitor.id)
            yield Hot(store, ConversationStore(pool, shards), cache, direct, proxy, conversation)
        finally:
            await via_proxy.aclose()
            await direct.aclose()
            await proxy.close()
            await pool.close()


def _seqs(messages: list[Message]) -> list[int]:
    return [m.seq for m in messages]


def _hits() -> float:
    return REGISTRY.get_sample_value("livedesk_chat_hot_cache_reads_total", {"outcome": "hit"}) or 0


async def test_resume_and_first_page_are_served_warm_from_the_cache(hot: Hot) -> None:
    await hot.say("a", "b", "c", "d")
    hits_before = _hits()
    assert _seqs(await hot.after(0)) == [1, 2, 3, 4]  # resume from the start
    assert _seqs(await hot.after(2)) == [3, 4]  # resume mid-way
    assert await hot.after(4) == []  # resume, nothing new
    assert _seqs(await hot.before(5, 2)) == [3, 4]  # first page of history
    assert [m.body for m in await hot.before(5)] == ["a", "b", "c", "d"]
    assert hot.cache.stats.hits == 5
    assert hot.cache.stats.misses == 0
    assert _hits() - hits_before == 5  # the Prometheus counter says the same


async def test_redis_flushed_resume_and_history_still_exact_from_postgres(hot: Hot) -> None:
    await hot.say("a", "b", "c")
    assert _seqs(await hot.after(0)) == [1, 2, 3]
    assert hot.cache.stats.hits == 1
    await hot.redis.flushall()  # the private server: everything the cache had is gone
    assert _seqs(await hot.after(0)) == [1, 2, 3]
    assert _seqs(await hot.before(4)) == [1, 2, 3]
    assert (hot.cache.stats.hits, hot.cache.stats.misses) == (1, 2)
    # The next message starts a new run at its seq; older pages still come from PostgreSQL.
    await hot.say("d")
    assert _seqs(await hot.after(3)) == [4]
    assert hot.cache.stats.hits == 2
    assert _seqs(await hot.after(1)) == [2, 3, 4]
    assert hot.cache.stats.misses == 3


async def test_redis_unreachable_sends_and_reads_keep_working_and_stay_exact(hot: Hot) -> None:
    await hot.say("a", "b")
    hot.proxy.cut()
    # Sent while Redis is away: committed in PostgreSQL, missing from the cache.
    assert await hot.say("c") == [3]
    assert hot.cache.stats.write_errors == 1
    assert _seqs(await hot.after(0)) == [1, 2, 3]
    assert _seqs(await hot.before(4)) == [1, 2, 3]
    assert hot.cache.stats.read_errors == 2
    hot.proxy.heal()
    # Redis is back, holding 1..2 but not 3: the cache must not answer with 1..2.
    assert _seqs(await hot.after(0)) == [1, 2, 3]
    assert _seqs(await hot.before(4)) == [1, 2, 3]
    assert hot.cache.stats.hits == 0
    # 4 follows a hole (3): the run restarts at 4, never 1, 2, 4.
    await hot.say("d")
    assert _seqs(await hot.after(1)) == [2, 3, 4]
    assert _seqs(await hot.after(3)) == [4]
    assert hot.cache.stats.hits == 1
    assert await hot.redis.zcard(hot.cache.key(hot.conversation.id)) == 1


async def test_only_the_last_n_are_cached_older_pages_come_from_postgres(hot: Hot) -> None:
    await hot.say(*"abcdefgh")  # max_messages=5: the cache holds 4..8
    assert _seqs(await hot.before(9, 3)) == [6, 7, 8]
    assert _seqs(await hot.after(3)) == [4, 5, 6, 7, 8]
    assert hot.cache.stats.hits == 2
    assert _seqs(await hot.before(9)) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert _seqs(await hot.after(2, 3)) == [3, 4, 5]
    assert hot.cache.stats.misses == 2
    key = hot.cache.key(hot.conversation.id)
    assert await hot.redis.zcard(key) == 5
    assert 0 < await hot.redis.ttl(key) <= 3600  # inactive conversations expire


def _message(conversation_id: uuid.UUID, seq: int) -> Message:
    import datetime as dt

    return Message(
        conversation_id, seq, uuid.uuid4(), uuid.uuid4(), "agent", uuid.uuid4(), f"m{seq}",
        None, dt.datetime.now(dt.UTC),
    )  # fmt: skip


async def test_write_throughs_out_of_order_never_leave_a_hole(hot: Hot) -> None:
    cid, cache = uuid.uuid4(), hot.cache
    for seq in (1, 2, 3, 5, 4):  # 5's write-through overtook 4's (two pods)
        await cache.add(_message(cid, seq))
    assert await cache.read(cid, 1, 5, known=5) is None  # 1..3 were dropped at the hole
    got = await cache.read(cid, 4, 10, known=5)
    assert got is not None
    assert _seqs(got) == [4, 5]
    await cache.add(_message(cid, 5))  # a repeated write-through changes nothing
    assert await hot.redis.zcard(cache.key(cid)) == 2
    # A reader who knows seq 6 exists is not served 4..5 as if complete.
    assert await cache.read(cid, 4, 10, known=6) is None


async def test_invalidate_forgets_a_conversation_and_refuses_late_write_throughs(
    hot: Hot,
) -> None:
    await hot.say("a", "b")
    await hot.store.invalidate_cached(hot.conversation.id)
    assert await hot.redis.exists(hot.cache.key(hot.conversation.id)) == 0
    await hot.say("c")  # e.g. a write-through still in flight when erasure ran
    assert await hot.redis.exists(hot.cache.key(hot.conversation.id)) == 0
    assert _seqs(await hot.after(0)) == [1, 2, 3]
    assert hot.cache.stats.hits == 0
