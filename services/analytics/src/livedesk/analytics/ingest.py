"""Events into ClickHouse in batches, each event acknowledged only once it is stored.

The bus consumer runs many handlers at once. Each handler turns its event
into a row, adds it to the open batch and waits for that batch's flush:

    handler ─ add(row) ─▶ [ batch: up to INGEST_BATCH_SIZE rows ] ─ one INSERT ─▶ ClickHouse
       ▲                                      │ full, or INGEST_FLUSH_INTERVAL elapsed
       └────────── returns / raises ◀─────────┘

A handler returns only after the INSERT holding its row succeeded, so the
consumer acks the delivery after the data is safe. If the INSERT fails, every
handler of that batch raises and the consumer retries each event later.
Retries and redeliveries are harmless: rows sharing an event_id collapse in
the ReplacingMergeTree (see ``migrations/0001_events.sql``).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from livedesk.analytics.erasure import (
    ERASURE_TYPES,
    Eraser,
    ErasureGuard,
    created_visitor,
    erasure_of,
)
from livedesk.analytics.metrics import (
    EVENTS_ERASED,
    EVENTS_IN_FLIGHT,
    EVENTS_INGESTED,
    INGEST_DELAY,
    LAST_FLUSH_ROWS,
    OLDEST_EVENT_AGE,
)
from livedesk.analytics.payload_json import payload_json
from livedesk.analytics.summary import refresh_conversations, touches_summary
from livedesk.platform.bus import payload_of
from livedesk.platform.logging import get_logger
from livedesk.platform.tracing import parse_traceparent

if TYPE_CHECKING:
    from livedesk.analytics.store import Store
    from livedesk.platform.bus import Envelope

__all__ = ["EVENT_COLUMNS", "Batcher", "EventIngestor", "row_of"]

log = get_logger("livedesk.analytics.ingest")

T = TypeVar("T")

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "type",
    "tenant_id",
    "conversation_id",
    "producer",
    "occurred_at",
    "trace_id",
    "payload",
    "ingested_at",
)
"""Columns of ``events`` in the order :func:`row_of` fills them."""

_TYPE_COLUMN = EVENT_COLUMNS.index("type")
_TENANT_COLUMN = EVENT_COLUMNS.index("tenant_id")
_CONVERSATION_COLUMN = EVENT_COLUMNS.index("conversation_id")
_OCCURRED_COLUMN = EVENT_COLUMNS.index("occurred_at")
_EVENT_ID_COLUMN = EVENT_COLUMNS.index("event_id")
_PAYLOAD_COLUMN = EVENT_COLUMNS.index("payload")

Row = tuple[Any, ...]


def row_of(env: Envelope, ingested_at: dt.datetime) -> tuple[Any, ...]:
    """The ``events`` row of ``env`` (columns as in :data:`EVENT_COLUMNS`).

    Times are timezone-aware UTC: the client reads a naive time as local time.
    """
    parsed = parse_traceparent(env.traceparent) if env.traceparent else None
    payload = payload_json(payload_of(env))
    return (
        uuid.UUID(env.event_id),
        env.type,
        env.tenant_id,
        env.conversation_id,
        env.producer,
        env.occurred_at.ToDatetime(tzinfo=dt.UTC),
        parsed[0] if parsed else "",
        payload,
        ingested_at,
    )


@dataclass(eq=False)
class _Batch(Generic[T]):
    items: list[T] = field(default_factory=list)
    # One future per caller, not one shared: a caller cancelled while waiting
    # cancels only its own (asyncio.shield around a shared one would do the
    # same, at several times the cost per event).
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Batcher(Generic[T]):
    """Collects items from concurrent callers and writes them in batches.

    :meth:`add` returns when the batch holding the item was written, and
    raises what the write raised, so every caller learns its own outcome. A
    batch is written when it holds ``max_items``, or ``max_delay`` seconds
    after its first item, whichever comes first.

    Args:
        write: writes one batch; called once per batch, never with an empty list.
        max_items: items that make a batch full.
        max_delay: seconds the first item of a batch waits at most.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[None]],
        *,
        max_items: int,
        max_delay: float,
    ) -> None:
        if max_items < 1 or max_delay <= 0:
            raise ValueError("max_items must be >= 1 and max_delay > 0")
        self._write = write
        self._max_items = max_items
        self._max_delay = max_delay
        self._open: _Batch[T] | None = None
        self._writing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Items waiting in the open batch (not yet being written)."""
        return len(self._open.items) if self._open is not None else 0

    async def add(self, item: T) -> None:
        """Add ``item`` and wait until its batch is written.

        Raises:
            RuntimeError: the batcher is closed.
            Exception: whatever writing the batch raised.
        """
        if self._closed:
            raise RuntimeError("batcher is closed")
        loop = asyncio.get_running_loop()
        batch = self._open
        if batch is None:
            batch = self._open = _Batch()
            batch.timer = loop.call_later(self._max_delay, self._due, batch)
        done = loop.create_future()
        batch.items.append(item)
        batch.waiters.append(done)
        if len(batch.items) >= self._max_items:
            self._flush_open()
        await done

    def _due(self, batch: _Batch[T]) -> None:
        if batch is self._open:
            self._flush_open()

    def _flush_open(self) -> None:
        batch, self._open = self._open, None
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._flush(batch), name="analytics-flush")
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _flush(self, batch: _Batch[T]) -> None:
        # Waiters already done were cancelled: their callers are gone.
        try:
            await self._write(batch.items)
        except asyncio.CancelledError:
            for done in batch.waiters:
                done.cancel()
            raise
        except Exception as exc:
            for done in batch.waiters:
                if not done.done():
                    done.set_exception(exc)
        else:
            for done in batch.waiters:
                if not done.done():
                    done.set_result(None)

    async def flush(self) -> None:
        """Write the open batch now and wait for every write in progress."""
        self._flush_open()
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)

    async def close(self) -> None:
        """Refuse new items, write what is pending, and wait for the writes."""
        self._closed = True
        await self.flush()


class EventIngestor:
    """The analytics bus handler: each event becomes a row of ``events``, in batches.

    Erasure events (``visitor.erased``, ``conversation.purged``) are applied
    instead of stored, and events of an erased conversation are dropped: see
    ``erasure.py``. Batches are screened only for tenants with erasure records
    (:class:`~livedesk.analytics.erasure.ErasureGuard`); batches without
    erasures are written concurrently, a batch with erasures alone.

    Args:
        store: where the rows go.
        batch_size: rows per INSERT at most.
        flush_interval: seconds a row waits at most for its batch to fill.
        cluster: ClickHouse cluster name (``CLICKHOUSE_CLUSTER``), for the erasures' DELETEs.
    """

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int,
        flush_interval: float,
        cluster: str | None = None,
    ) -> None:
        self._store = store
        self._eraser = Eraser(store, cluster)
        self._guard = ErasureGuard.of(store)
        self._batcher: Batcher[tuple[Any, ...]] = Batcher(
            self._insert, max_items=batch_size, max_delay=flush_interval
        )
        # occurred_at (epoch seconds) of every event in hand, for the lag metrics.
        self._in_flight: dict[int, float] = {}
        self._ids = itertools.count()
        EVENTS_IN_FLIGHT.set_function(lambda: len(self._in_flight))
        OLDEST_EVENT_AGE.set_function(self.oldest_age)

    @property
    def in_flight(self) -> int:
        """Events received and not yet stored (or failed)."""
        return len(self._in_flight)

    def oldest_age(self) -> float:
        """Seconds since the oldest event in hand occurred; 0 when none is."""
        if not self._in_flight:
            return 0.0
        return max(0.0, time.time() - min(self._in_flight.values()))

    @property
    def pending(self) -> int:
        """Rows waiting for their batch to fill (not yet being inserted)."""
        return self._batcher.pending

    async def handle(self, env: Envelope) -> None:
        """Store ``env``; returns once ClickHouse has it, raises if the insert failed."""
        row = row_of(env, dt.datetime.now(dt.UTC))
        key = next(self._ids)
        self._in_flight[key] = row[_OCCURRED_COLUMN].timestamp()
        try:
            await self._batcher.add(row)
        finally:
            del self._in_flight[key]

    async def _insert(self, rows: list[Row]) -> None:
        try:
            stored = await self._store_batch(rows)
        except Exception as exc:
            log.warning("ingest_insert_failed", rows=len(rows), error=str(exc))
            raise
        LAST_FLUSH_ROWS.set(len(stored))
        now = time.time()
        for row in rows:
            INGEST_DELAY.observe(max(0.0, now - row[_OCCURRED_COLUMN].timestamp()))
        kept = {id(r) for r in stored}
        counts = collections.Counter((r[_TYPE_COLUMN], id(r) in kept) for r in rows)
        for (event_type, was_stored), count in counts.items():
            (EVENTS_INGESTED if was_stored else EVENTS_ERASED).labels(event_type).inc(count)
        log.debug("ingest_flushed", rows=len(stored), erased=len(rows) - len(stored))

    async def _store_batch(self, rows: list[Row]) -> list[Row]:
        """Apply the batch's erasures, store its other rows unless erased; the rows stored."""
        erasures = [
            erasure_of(
                r[_TYPE_COLUMN],
                r[_TENANT_COLUMN],
                r[_CONVERSATION_COLUMN],
                r[_PAYLOAD_COLUMN],
                r[_EVENT_ID_COLUMN],
            )
            for r in rows
            if r[_TYPE_COLUMN] in ERASURE_TYPES
        ]
        if not erasures:
            async with self._guard.batch():
                return await self._store_rows(rows)
        async with self._guard.erasing():
            await self._eraser.erase([e for e in erasures if e is not None])
            # Erasures first: a late event in the same batch as its erasure is dropped too.
            return await self._store_rows([r for r in rows if r[_TYPE_COLUMN] not in ERASURE_TYPES])

    async def _store_rows(self, rows: list[Row]) -> list[Row]:
        tenants = {r[_TENANT_COLUMN] for r in rows if r[_CONVERSATION_COLUMN]}
        screened = await self._guard.erased_tenants(tenants)
        stored = await self._unerased(rows, screened, stored=False)
        if not stored:
            return stored
        await self._store.insert("events", stored, EVENT_COLUMNS)
        # Before the batch is acked: a crash here redelivers it, and the
        # re-computation runs again then.
        await refresh_conversations(
            self._store,
            (
                (r[_TENANT_COLUMN], r[_CONVERSATION_COLUMN])
                for r in stored
                if r[_CONVERSATION_COLUMN] and touches_summary(r[_TYPE_COLUMN])
            ),
        )
        if self._store.exclusive:
            # No other process writes this data, and no erasure of this one ran
            # since the screen above (the guard keeps them apart): nothing to recheck.
            return stored
        # Another replica may have erased one of these conversations since the
        # screen above: its DELETE ran before these rows existed, so delete them.
        return await self._unerased(
            stored, await self._guard.erased_tenants(tenants, recheck=True), stored=True
        )

    async def _unerased(self, rows: list[Row], tenants: set[str], *, stored: bool) -> list[Row]:
        """``rows`` without those of erased conversations (deleting them if ``stored``).

        Only rows of ``tenants`` are screened: the others have no erasure record.
        """
        conversations = [
            (r[_TENANT_COLUMN], r[_CONVERSATION_COLUMN])
            for r in rows
            if r[_CONVERSATION_COLUMN] and r[_TENANT_COLUMN] in tenants
        ]
        if not conversations:
            return rows
        created = [
            (
                (r[_TENANT_COLUMN], r[_CONVERSATION_COLUMN]),
                (r[_TENANT_COLUMN], created_visitor(r[_PAYLOAD_COLUMN])),
            )
            for r in rows
            if r[_TYPE_COLUMN] == "conversation.created"
            and r[_CONVERSATION_COLUMN]
            and r[_TENANT_COLUMN] in tenants
        ]
        found = await self._eraser.screen(conversations, created)
        # An erased visitor's conversation chat did not list: events of it stored
        # before its conversation.created arrived are deleted now.
        await self._eraser.delete_rows(found.erased if stored else found.newly_erased)
        if not found.erased:
            return rows
        log.info("late_events_dropped", conversations=len(found.erased), stored=stored)
        return [r for r in rows if (r[_TENANT_COLUMN], r[_CONVERSATION_COLUMN]) not in found.erased]

    async def close(self) -> None:
        """Write the rows still waiting, then accept no more."""
        await self._batcher.close()
