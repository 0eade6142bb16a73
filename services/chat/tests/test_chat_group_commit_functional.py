"""Group commit: concurrent sends share statements and keep every guarantee of a single send."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from prometheus_client import REGISTRY

from livedesk.chat.conversations import ConversationStore
from livedesk.chat.models import Message
from livedesk.chat.shards import ShardMap, Shards, open_shards
from livedesk.platform.bus import decode
from livedesk.platform.ids import uuid7
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database

pytestmark = pytest.mark.integration


@dataclass
class Db:
    pool: asyncpg.Pool
    shards: Shards
    tenant: uuid.UUID


@pytest.fixture
async def db(pg_database: str) -> AsyncIterator[Db]:
    pool = await open_database(pg_database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    shards = await open_shards(
        ShardMap.single(pg_database), directory_dsn=pg_database, directory_pool=pool
    )
    try:
        yield Db(pool, shards, uuid7())
    finally:
        await shards.close(keep=[pool])
        await pool.close()


async def _conversations(
    db: Db, n: int, status: str = "assigned"
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """``n`` conversations of the tenant: (conversation id, its visitor's id)."""
    rows = [(uuid7(), db.tenant, uuid7(), uuid7(), status) for _ in range(n)]
    await db.pool.copy_records_to_table(
        "conversations",
        records=rows,
        columns=["id", "tenant_id", "inbox_id", "visitor_id", "status"],
    )
    return [(r[0], r[3]) for r in rows]


def _statements() -> float:
    value = REGISTRY.get_sample_value("livedesk_chat_group_commits_total", {"unit": "statements"})
    return value or 0.0


def _timed_commits() -> float:
    return REGISTRY.get_sample_value("livedesk_chat_group_commit_seconds_count") or 0.0


async def _send(
    store: ConversationStore,
    db: Db,
    conversation: uuid.UUID,
    visitor: uuid.UUID,
    client_msg_id: str,
    body: str = "hi",
) -> tuple[Message, bool] | None:
    return await store.append(
        tenant_id=db.tenant,
        conversation_id=conversation,
        sender_kind="visitor",
        sender_id=visitor,
        guard="visitor",
        body=body,
        client_msg_id=client_msg_id,
    )


async def test_concurrent_sends_share_statements_with_gap_free_seqs_and_one_event_each(
    db: Db,
) -> None:
    conversations = await _conversations(db, 40)
    store = ConversationStore(db.pool, db.shards)
    before, timed = _statements(), _timed_commits()

    async def talk(conversation: uuid.UUID, visitor: uuid.UUID) -> list[int]:
        seqs = []
        for i in range(5):
            appended = await _send(store, db, conversation, visitor, f"m{i}", f"body {i}")
            assert appended is not None
            assert appended[1]
            seqs.append(appended[0].seq)
        return seqs

    results = await asyncio.gather(*(talk(c, v) for c, v in conversations))

    assert all(seqs == [1, 2, 3, 4, 5] for seqs in results)
    assert _statements() - before < 200 / 2  # 200 messages, batched
    assert _timed_commits() - timed == _statements() - before  # each one timed
    rows = await db.pool.fetch("SELECT conversation_id, seq, id, body FROM messages")
    assert len(rows) == 200
    assert {(r["conversation_id"], r["seq"]) for r in rows} == {
        (c, s) for c, _ in conversations for s in range(1, 6)
    }
    assert all(r["body"] == f"body {r['seq'] - 1}" for r in rows)
    # Each message has its event, carrying its own seq.
    events = [decode(r["body"]) for r in await db.pool.fetch("SELECT body FROM outbox")]
    by_message = {e.message_created.message_id: e.message_created.seq for e in events}
    assert by_message == {str(r["id"]): r["seq"] for r in rows}
    last = await db.pool.fetch("SELECT last_seq FROM conversations")
    assert {r["last_seq"] for r in last} == {5}


async def test_a_batch_answers_each_send_as_if_it_were_alone(db: Db) -> None:
    (a, va), (b, vb), (c, _), (d, vd) = await _conversations(db, 4)
    ((resolved, vr),) = await _conversations(db, 1, status="resolved")
    store = ConversationStore(db.pool, db.shards)
    stored = await _send(store, db, a, va, "retry-me")
    assert stored is not None
    before = _statements()

    results = await asyncio.gather(
        _send(store, db, a, va, "retry-me"),  # a retry of a stored send
        _send(store, db, b, vb, "b1"),
        _send(store, db, b, vb, "b2"),  # the same conversation twice
        _send(store, db, c, vd, "c1"),  # not c's visitor
        _send(store, db, resolved, vr, "r1"),  # resolved: refused
        _send(store, db, d, vd, "d1"),
    )

    retry, b1, b2, foreign, refused, d1 = results
    assert retry is not None
    assert (retry[0].id, retry[0].seq, retry[1]) == (stored[0].id, 1, False)
    assert b1 is not None
    assert b2 is not None
    assert {b1[0].seq, b2[0].seq} == {1, 2}
    assert foreign is None
    assert refused is None
    assert d1 is not None
    assert (d1[0].seq, d1[1]) == (1, True)
    assert _statements() - before < len(results)  # they did share statements
    rows = await db.pool.fetch("SELECT conversation_id, count(*) FROM messages GROUP BY 1")
    counts = {row[0]: row[1] for row in rows}
    assert counts == {a: 1, b: 2, d: 1}
    assert await db.pool.fetchval("SELECT count(*) FROM outbox") == 4


async def test_two_pods_batching_the_same_conversations_never_deadlock_or_skip(db: Db) -> None:
    conversations = await _conversations(db, 30)
    pods = [ConversationStore(db.pool, db.shards), ConversationStore(db.pool, db.shards)]

    async def pod_round(
        store: ConversationStore, order: list[tuple[uuid.UUID, uuid.UUID]], r: int
    ) -> None:
        # The two pods see the conversations in opposite orders.
        results = await asyncio.gather(
            *(_send(store, db, c, v, f"{id(store)}:{r}") for c, v in order)
        )
        assert all(x is not None for x in results)
        assert all(x[1] for x in results if x is not None)

    async with asyncio.timeout(60):
        for r in range(5):
            await asyncio.gather(
                pod_round(pods[0], conversations, r),
                pod_round(pods[1], conversations[::-1], r),
            )

    seqs = await db.pool.fetch(
        "SELECT conversation_id, array_agg(seq ORDER BY seq) AS seqs FROM messages GROUP BY 1"
    )
    assert len(seqs) == 30
    assert all(row["seqs"] == list(range(1, 11)) for row in seqs)
