"""Ingest: events become rows, written in batches, each handler released by its batch's INSERT."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import pytest
from prometheus_client import REGISTRY

from livedesk.analytics.errors import StoreError
from livedesk.analytics.ingest import EVENT_COLUMNS, Batcher, EventIngestor, row_of
from livedesk.analytics.store import Store
from livedesk.contracts.events.v1.message_pb2 import MessageCreated
from livedesk.platform.bus import Envelope, new_event
from livedesk.platform.testing import wait_until

NEVER = 3600.0
"""A flush interval no test reaches: what completes must have flushed on size."""
LIMIT = 30.0
"""Bound on awaiting handlers, so a batch that never flushes fails the test by name."""

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _event(body: str = "hello", *, event_id: str | None = None) -> Envelope:
    return new_event(
        MessageCreated(message_id="m-1", seq=7, sender_id="visitor-1", body=body),
        tenant_id="tenant-1",
        producer="chat",
        conversation_id="conv-1",
        event_id=event_id,
        occurred_at=dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC),
        traceparent=TRACEPARENT,
    )


def _ingested(event_type: str = "message.created") -> float:
    value = REGISTRY.get_sample_value(
        "livedesk_analytics_events_ingested_total", {"type": event_type}
    )
    return value or 0.0


def _last_flush_rows() -> float | None:
    return REGISTRY.get_sample_value("livedesk_analytics_last_flush_rows")


async def _count(store: Store, *, final: bool = True) -> int:
    rows = await store.query(f"SELECT count() FROM events {'FINAL' if final else ''}")
    return int(rows[0][0])


# --- rows -------------------------------------------------------------------


def test_row_of_maps_the_envelope_to_the_events_columns() -> None:
    env = _event("hi there")
    at = dt.datetime(2024, 5, 2, tzinfo=dt.UTC)
    row = dict(zip(EVENT_COLUMNS, row_of(env, at), strict=True))
    assert row["event_id"] == uuid.UUID(env.event_id)
    assert row["type"] == "message.created"
    assert (row["tenant_id"], row["conversation_id"], row["producer"]) == (
        "tenant-1",
        "conv-1",
        "chat",
    )
    assert row["occurred_at"] == dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    assert row["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert json.loads(row["payload"]) == {
        "message_id": "m-1",
        "seq": "7",
        "sender_id": "visitor-1",
        "body": "hi there",
    }
    assert "\n" not in row["payload"]
    assert row["ingested_at"] == at


# --- through a real store ---------------------------------------------------


async def test_the_same_event_twice_counts_once(migrated: Store) -> None:
    ingestor = EventIngestor(migrated, batch_size=1, flush_interval=NEVER)
    env = _event()
    await ingestor.handle(env)
    await ingestor.handle(env)  # a redelivery: its own batch and INSERT
    await ingestor.close()
    assert await _count(migrated, final=False) == 2
    assert await _count(migrated) == 1
    rows = await migrated.query("SELECT toString(event_id), trace_id FROM events FINAL")
    assert rows == [(env.event_id, "0af7651916cd43dd8448eb211c80319c")]


async def test_a_full_batch_is_written_at_once_and_releases_every_handler(
    migrated: Store,
) -> None:
    before = _ingested()
    ingestor = EventIngestor(migrated, batch_size=3, flush_interval=NEVER)
    await asyncio.wait_for(
        asyncio.gather(*(ingestor.handle(_event(f"m{i}")) for i in range(6))), LIMIT
    )
    assert await _count(migrated) == 6
    assert _last_flush_rows() == 3
    assert _ingested() - before == 6
    await ingestor.close()


async def test_a_partial_batch_is_written_after_the_flush_interval(migrated: Store) -> None:
    before = _ingested()
    ingestor = EventIngestor(migrated, batch_size=1000, flush_interval=0.05)
    await asyncio.wait_for(
        asyncio.gather(*(ingestor.handle(_event(f"m{i}")) for i in range(2))), LIMIT
    )
    assert await _count(migrated) == 2
    assert _last_flush_rows() == 2
    assert _ingested() - before == 2
    await ingestor.close()


async def test_close_writes_the_rows_still_waiting(migrated: Store) -> None:
    ingestor = EventIngestor(migrated, batch_size=1000, flush_interval=NEVER)
    handlers = [asyncio.create_task(ingestor.handle(_event(f"m{i}"))) for i in range(3)]

    async def all_waiting() -> bool:
        return ingestor.pending == 3

    await wait_until(all_waiting, timeout=LIMIT, what="3 rows waiting")
    await ingestor.close()
    await asyncio.wait_for(asyncio.gather(*handlers), LIMIT)
    assert await _count(migrated) == 3


async def test_every_handler_of_a_failed_insert_raises(store: Store) -> None:
    # No migrations: the events table does not exist, so the real INSERT fails.
    before = _ingested()
    ingestor = EventIngestor(store, batch_size=3, flush_interval=NEVER)
    results = await asyncio.wait_for(
        asyncio.gather(
            *(ingestor.handle(_event(f"m{i}")) for i in range(3)), return_exceptions=True
        ),
        LIMIT,
    )
    assert [type(r) for r in results] == [StoreError, StoreError, StoreError]
    assert _ingested() == before
    await ingestor.close()


# --- batching logic ---------------------------------------------------------


async def test_batcher_failure_reaches_every_waiting_caller() -> None:
    # The one fake: a write that always fails, to test the batching logic alone.
    calls: list[list[int]] = []

    async def failing_write(items: list[int]) -> None:
        calls.append(items)
        raise ConnectionError("ClickHouse went away")

    batcher: Batcher[int] = Batcher(failing_write, max_items=3, max_delay=NEVER)
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.add(i) for i in range(3)), return_exceptions=True), LIMIT
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    assert calls == [[0, 1, 2]]


async def test_batcher_caller_cancelled_while_waiting_leaves_the_others_their_outcome() -> None:
    written: list[list[int]] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def gated_write(items: list[int]) -> None:
        started.set()
        await release.wait()
        written.append(items)

    batcher: Batcher[int] = Batcher(gated_write, max_items=2, max_delay=NEVER)
    first = asyncio.create_task(batcher.add(1))
    second = asyncio.create_task(batcher.add(2))
    await asyncio.wait_for(started.wait(), LIMIT)
    first.cancel()
    release.set()
    await asyncio.wait_for(second, LIMIT)
    assert first.cancelled()
    assert written == [[1, 2]]


async def test_batcher_refuses_items_once_closed() -> None:
    async def write(items: list[int]) -> None:
        raise AssertionError("nothing to write")

    batcher: Batcher[int] = Batcher(write, max_items=2, max_delay=NEVER)
    await batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.add(1)


@pytest.mark.parametrize(("max_items", "max_delay"), [(0, 1.0), (1, 0.0)])
def test_batcher_rejects_limits_that_never_flush(max_items: int, max_delay: float) -> None:
    async def write(items: list[int]) -> None:
        pass

    with pytest.raises(ValueError, match="max_"):
        Batcher(write, max_items=max_items, max_delay=max_delay)
