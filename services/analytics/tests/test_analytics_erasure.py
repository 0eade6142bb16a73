"""Erasure and retention through the real consumer: RabbitMQ in, chDB rows deleted.

visitor.erased deletes the visitor's conversations (listed, and found by
visitor id) from every table; conversation.purged one conversation; events of
an erased conversation arriving later are dropped; a redelivered erasure is
harmless; conversation.archived changes nothing; nobody else's data is touched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import REGISTRY

from livedesk.analytics import reports
from livedesk.analytics.erasure import CONVERSATION_TABLES, ErasureGuard
from livedesk.analytics.ingest import EventIngestor
from livedesk.analytics.reports import ReportFilter
from livedesk.analytics.search import parse_query, search_messages
from livedesk.contracts.events.v1.common_pb2 import ACTOR_KIND_AGENT, ACTOR_KIND_VISITOR
from livedesk.contracts.events.v1.conversation_pb2 import (
    ConversationArchived,
    ConversationAssigned,
    ConversationCreated,
    ConversationPurged,
    ConversationResolved,
)
from livedesk.contracts.events.v1.csat_pb2 import CsatSubmitted
from livedesk.contracts.events.v1.message_pb2 import MessageCreated
from livedesk.contracts.events.v1.visitor_pb2 import (
    ERASURE_SCOPE_VISITOR_CONVERSATIONS,
    VisitorErased,
)
from livedesk.platform.bus import EventConsumer, EventPublisher, QueueTopology, connect, new_event
from livedesk.platform.testing import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from google.protobuf.message import Message

    from livedesk.analytics.store import Store
    from livedesk.platform.bus import Envelope
    from livedesk.platform.testing.pytest_plugin import BusNames

pytestmark = pytest.mark.integration

TENANT = "tenant-e"
OTHER = "tenant-f"
START = dt.datetime(2024, 6, 3, 9, tzinfo=dt.UTC)
RANGE = ReportFilter(TENANT, START - dt.timedelta(days=1), START + dt.timedelta(days=1))
LIMIT = 60.0


def _event(payload: Message, tenant: str, conversation: str = "", minutes: float = 0) -> Envelope:
    return new_event(
        payload,
        tenant_id=tenant,
        producer="chat",
        conversation_id=conversation,
        occurred_at=START + dt.timedelta(minutes=minutes),
    )


def _message(tenant: str, conversation: str, seq: int, sender: str, body: str) -> Envelope:
    kind = ACTOR_KIND_VISITOR if sender.startswith("vis") else ACTOR_KIND_AGENT
    payload = MessageCreated(
        message_id=str(uuid.uuid4()), seq=seq, sender_kind=kind, sender_id=sender, body=body
    )
    payload.created_at.FromDatetime(START + dt.timedelta(minutes=seq))
    return _event(payload, tenant, conversation, seq)


def _conversation(tenant: str, conversation: str, visitor: str, word: str) -> list[Envelope]:
    """A whole conversation: created, visitor says ``word``, answered, resolved, rated."""
    return [
        _event(ConversationCreated(inbox_id="web", visitor_id=visitor), tenant, conversation),
        _message(tenant, conversation, 1, visitor, f"my {word} is broken"),
        _event(ConversationAssigned(agent_id="agent-1"), tenant, conversation, 2),
        _message(tenant, conversation, 3, "agent-1", f"sorry about your {word}"),
        _event(ConversationResolved(agent_id="agent-1"), tenant, conversation, 4),
        _event(CsatSubmitted(rating=5, agent_id="agent-1"), tenant, conversation, 5),
    ]


def _erased(event_type: str) -> float:
    value = REGISTRY.get_sample_value(
        "livedesk_analytics_events_erased_total", {"type": event_type}
    )
    return value or 0.0


class Pipeline:
    """Publishes events to a private exchange that the real consumer + ingester drain."""

    def __init__(self, store: Store, publisher: EventPublisher) -> None:
        self.store = store
        self._publisher = publisher

    async def publish(self, events: list[Envelope]) -> None:
        await self._publisher.publish_many(events)

    async def publish_and_wait_erased(self, events: list[Envelope], event_type: str) -> None:
        """Publish ``events`` and wait until one more ``event_type`` was handled without a row."""
        before = _erased(event_type)
        await self.publish(events)

        async def handled() -> bool:
            return _erased(event_type) > before

        await wait_until(handled, timeout=LIMIT, what=f"{event_type} erased or dropped")

    async def wait_stored(self, tenant: str, conversation: str, rows: int) -> None:
        async def stored() -> bool:
            return await self.conversation_rows(tenant, conversation) == rows

        await wait_until(stored, timeout=LIMIT, what=f"{rows} event rows of {conversation}")

    async def conversation_rows(self, tenant: str, conversation: str) -> int:
        rows = await self.store.query(
            "SELECT count() FROM events FINAL WHERE tenant_id = {t:String}"
            " AND conversation_id = {c:String}",
            {"t": tenant, "c": conversation},
        )
        return int(rows[0][0])

    async def conversations(self, tenant: str) -> dict[str, set[str]]:
        """The conversation ids each conversation table holds for ``tenant``."""
        found: dict[str, set[str]] = {}
        for table in CONVERSATION_TABLES:
            rows = await self.store.query(
                f"SELECT DISTINCT conversation_id FROM {table} WHERE tenant_id = {{t:String}}",
                {"t": tenant},
            )
            found[table] = {str(r[0]) for r in rows}
        return found

    async def search(self, tenant: str, text: str) -> list[str]:
        page = await search_messages(
            self.store, tenant_id=tenant, query=parse_query(text), start=None, end=None
        )
        return [str(item["body"]) for item in page["items"]]


@pytest.fixture
async def pipeline(migrated: Store, bus_names: BusNames) -> AsyncIterator[Pipeline]:
    ingestor = EventIngestor(migrated, batch_size=20, flush_interval=0.05)
    connection = await connect(bus_names.amqp_url, "analytics-erasure-test")
    consumer = EventConsumer(
        connection,
        exchange_name=bus_names.exchange,
        topology=QueueTopology(bus_names.queue("analytics"), retry_delays_ms=(100,)),
        event_types=["#"],
        handler=ingestor.handle,
        prefetch=40,
        concurrency=20,
    )
    try:
        await consumer.start()
        publisher = await EventPublisher.create(connection, bus_names.exchange)
        try:
            yield Pipeline(migrated, publisher)
        finally:
            await publisher.close()
            await consumer.stop(10)
            await ingestor.close()
    finally:
        await connection.close()


def _every_table(ids: set[str]) -> dict[str, set[str]]:
    return dict.fromkeys(CONVERSATION_TABLES, ids)


async def _overview(store: Store, tenant: str = TENANT) -> dict[str, Any]:
    flt = ReportFilter(tenant, RANGE.start, RANGE.end)
    return await reports.overview(store, flt)


async def test_visitor_erased_deletes_the_visitor_everywhere_and_late_events_stay_out(
    pipeline: Pipeline,
) -> None:
    # vis-1 opened k1 (listed by chat) and k2 (not listed); vis-2 opened k3.
    # Another tenant has a conversation k1 too, opened by a visitor also called vis-1.
    history = (
        _conversation(TENANT, "k1", "vis-1", "zebra")
        + _conversation(TENANT, "k2", "vis-1", "zebra")
        + _conversation(TENANT, "k3", "vis-2", "giraffe")
        + _conversation(OTHER, "k1", "vis-1", "zebra")
    )
    await pipeline.publish(history)
    for tenant, conversation in [(TENANT, "k1"), (TENANT, "k2"), (TENANT, "k3"), (OTHER, "k1")]:
        await pipeline.wait_stored(tenant, conversation, 6)
    assert len(await pipeline.search(TENANT, "zebra")) == 4
    assert (await _overview(pipeline.store))["conversations_created"] == 3
    other_before = await pipeline.conversations(OTHER)
    other_overview = await _overview(pipeline.store, OTHER)

    erasure = _event(
        VisitorErased(
            visitor_id="vis-1",
            requested_by="admin-1",
            scope=ERASURE_SCOPE_VISITOR_CONVERSATIONS,
            conversation_ids=["k1"],
            request_id=str(uuid.uuid4()),
        ),
        TENANT,
        minutes=60,
    )
    await pipeline.publish_and_wait_erased([erasure], "visitor.erased")

    # Gone from every table, searchable text included; vis-2 and the other tenant untouched.
    assert await pipeline.conversations(TENANT) == _every_table({"k3"})
    assert await pipeline.search(TENANT, "zebra") == []
    assert sorted(await pipeline.search(TENANT, "giraffe")) == [
        "my giraffe is broken",
        "sorry about your giraffe",
    ]
    assert await pipeline.conversations(OTHER) == other_before == _every_table({"k1"})
    assert len(await pipeline.search(OTHER, "zebra")) == 2
    assert await _overview(pipeline.store, OTHER) == other_overview
    # Reports no longer count the erased conversations.
    overview = await _overview(pipeline.store)
    assert overview["conversations_created"] == 1
    assert overview["csat"]["ratings"] == 1
    recorded = await pipeline.store.query(
        "SELECT conversation_id, reason FROM erased_conversations FINAL ORDER BY conversation_id"
    )
    assert recorded == [("k1", "visitor.erased"), ("k2", "visitor.erased")]

    # Chat's outbox publishes events of erased conversations after the erasure:
    # a message of k1, a rating of k2, and a conversation vis-1 opened that chat's
    # list did not name (k4: its message arrives first, then its creation).
    await pipeline.publish_and_wait_erased(
        [_message(TENANT, "k1", 9, "vis-1", "zebra again")], "message.created"
    )
    await pipeline.publish_and_wait_erased(
        [_event(CsatSubmitted(rating=1, agent_id="agent-1"), TENANT, "k2", 9)], "csat.submitted"
    )
    await pipeline.publish([_message(TENANT, "k4", 1, "vis-1", "zebra from k4")])
    await pipeline.wait_stored(TENANT, "k4", 1)
    await pipeline.publish_and_wait_erased(
        [_event(ConversationCreated(inbox_id="web", visitor_id="vis-1"), TENANT, "k4")],
        "conversation.created",
    )
    assert await pipeline.conversations(TENANT) == _every_table({"k3"})
    assert await pipeline.search(TENANT, "zebra") == []

    # The same erasure delivered again (chat retried, or RabbitMQ redelivered): harmless.
    await pipeline.publish_and_wait_erased([erasure], "visitor.erased")
    assert await pipeline.conversations(TENANT) == _every_table({"k3"})
    assert (await _overview(pipeline.store))["conversations_created"] == 1
    recorded = await pipeline.store.query(
        "SELECT conversation_id FROM erased_conversations FINAL ORDER BY conversation_id"
    )
    assert recorded == [("k1",), ("k2",), ("k4",)]
    assert await pipeline.conversations(OTHER) == other_before


async def test_purged_deletes_one_conversation_and_archived_changes_nothing(
    pipeline: Pipeline,
) -> None:
    history = _conversation(TENANT, "p1", "vis-1", "walrus") + _conversation(
        TENANT, "p2", "vis-2", "otter"
    )
    await pipeline.publish(history)
    await pipeline.wait_stored(TENANT, "p1", 6)
    await pipeline.wait_stored(TENANT, "p2", 6)
    before = await _overview(pipeline.store)
    assert before["conversations_created"] == 2

    # Archived: analytics keeps its copy; the event itself is stored, no number changes.
    archived = _event(ConversationArchived(archive_key="a/1.jsonl.gz"), TENANT, "p2", 30)
    await pipeline.publish([archived])
    await pipeline.wait_stored(TENANT, "p2", 7)
    assert await _overview(pipeline.store) == before
    assert await pipeline.conversations(TENANT) == _every_table({"p1", "p2"})

    purge = _event(ConversationPurged(visitor_id="vis-1", retention_days=30), TENANT, "p1", 60)
    await pipeline.publish_and_wait_erased([purge], "conversation.purged")
    assert await pipeline.conversations(TENANT) == _every_table({"p2"})
    assert await pipeline.search(TENANT, "walrus") == []
    assert len(await pipeline.search(TENANT, "otter")) == 2
    after = await _overview(pipeline.store)
    assert after["conversations_created"] == 1
    assert after["csat"]["ratings"] == 1

    # A late message of the purged conversation is dropped; a redelivered purge is harmless.
    await pipeline.publish_and_wait_erased(
        [_message(TENANT, "p1", 9, "agent-1", "walrus follow-up")], "message.created"
    )
    await pipeline.publish_and_wait_erased([purge], "conversation.purged")
    assert await pipeline.conversations(TENANT) == _every_table({"p2"})
    assert await pipeline.search(TENANT, "walrus") == []
    assert await _overview(pipeline.store) == after


async def test_a_replicas_erasure_after_the_screen_is_found_after_the_insert(
    migrated: Store,
) -> None:
    # A store other processes write (a shared ClickHouse server): this ingester
    # learns of another replica's erasure only from the records.
    migrated.exclusive = False
    ingestor = EventIngestor(migrated, batch_size=1, flush_interval=3600)
    try:
        await ingestor.handle(_message(TENANT, "r1", 1, "vis-1", "first"))
        # Another replica erases r2 now: the tenant had no record when this
        # ingester last looked, so r2's late message is not screened before its INSERT.
        await migrated.insert(
            "erased_conversations",
            [(TENANT, "r2", "conversation.purged", uuid.uuid4(), START)],
            ("tenant_id", "conversation_id", "reason", "event_id", "erased_at"),
        )
        before = _erased("message.created")
        await ingestor.handle(_message(TENANT, "r2", 1, "vis-2", "late"))
        assert _erased("message.created") == before + 1
        for table in CONVERSATION_TABLES:
            rows = await migrated.query(
                f"SELECT DISTINCT conversation_id FROM {table} WHERE tenant_id = {{t:String}}",
                {"t": TENANT},
            )
            assert "r2" not in {str(r[0]) for r in rows}, table
        # From now on the tenant is screened before the INSERT too.
        await ingestor.handle(_message(TENANT, "r2", 2, "vis-2", "later"))
        assert _erased("message.created") == before + 2
        rows = await migrated.query(
            "SELECT count() FROM events WHERE tenant_id = {t:String} AND conversation_id = 'r1'",
            {"t": TENANT},
        )
        assert rows == [(1,)]
    finally:
        await ingestor.close()


async def test_an_erasure_runs_alone_after_the_batches_in_progress(store: Store) -> None:
    guard = ErasureGuard(store)
    order: list[str] = []
    release = asyncio.Event()

    async def batch(name: str) -> None:
        order.append(f"{name} waits")
        async with guard.batch():
            order.append(f"{name} start")
            await release.wait()
            order.append(f"{name} end")

    async def erasure() -> None:
        order.append("erasure waits")
        async with guard.erasing():
            order.append("erasure")

    def reached(count: int) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            return len(order) >= count

        return probe

    tasks = [asyncio.create_task(batch("a")), asyncio.create_task(batch("b"))]
    await wait_until(reached(4), timeout=LIMIT, what="two batches at once")
    tasks.append(asyncio.create_task(erasure()))
    await wait_until(reached(5), timeout=LIMIT, what="erasure waiting")
    tasks.append(asyncio.create_task(batch("c")))
    await wait_until(reached(6), timeout=LIMIT, what="a batch after the erasure waiting")
    # Neither the erasure nor the batch that came after it started.
    assert order[4:] == ["erasure waits", "c waits"]
    release.set()
    await asyncio.gather(*tasks)
    assert order[6:] == ["a end", "b end", "erasure", "c start", "c end"]
