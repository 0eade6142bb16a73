"""Erasure and retention: deleting a conversation's data from every analytics table.

Two events delete data (``proto/livedesk/events/v1``):

* ``visitor.erased`` (GDPR right to erasure): every conversation chat listed,
  and every conversation analytics knows was opened by that visitor
  (``conversation.created.visitor_id``, or a visitor message sent by them),
  since chat's list may be empty or incomplete;
* ``conversation.purged`` (tenant retention): the envelope's conversation.

For each erased conversation the eraser first records its id in
``erased_conversations`` (and the visitor in ``erased_visitors``), then deletes
its rows from every table of :data:`CONVERSATION_TABLES` with a lightweight
``DELETE`` (rows vanish from queries at once and from disk at the parts' next
merge). Recording first matters: chat's outbox may still publish events of
an erased conversation after ``visitor.erased``, and the ingester screens
every batch against these records (:meth:`Eraser.screen`) before storing it,
and once more after (another replica may have erased one of its
conversations in between; any row stored after the record is then found by
that second screen, any row stored before it by the eraser's DELETE).

Erasure events themselves are not stored in ``events`` (a ``conversation.purged``
row would be a conversation row again); the two record tables are their trace,
and hold ids only. A redelivered erasure writes the same records (they
collapse) and deletes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from livedesk.analytics.daily import conversation_days, drop_days, mark_days
from livedesk.analytics.schema import render
from livedesk.platform.logging import get_logger

if TYPE_CHECKING:
    from livedesk.analytics.store import Store

__all__ = [
    "CONVERSATION_TABLES",
    "ERASURE_TYPES",
    "Eraser",
    "Erasure",
    "ErasureGuard",
    "Screened",
    "created_visitor",
    "erasure_of",
]

log = get_logger("livedesk.analytics.erasure")

Key = tuple[str, str]
"""(tenant_id, conversation_id), or (tenant_id, visitor_id) for visitors."""

VISITOR_ERASED = "visitor.erased"
CONVERSATION_PURGED = "conversation.purged"
ERASURE_TYPES: frozenset[str] = frozenset({VISITOR_ERASED, CONVERSATION_PURGED})
"""Event types that delete data instead of adding a row."""

CONVERSATION_TABLES: tuple[str, ...] = (
    "events",
    "conversation_events",
    "messages",
    "csat",
    "conversation_state",
    "conversation_summary",
)
"""Every table with a row per conversation fact (each has tenant_id and conversation_id).

``report_daily`` and ``report_hourly`` aggregate many conversations per row:
the pre-aggregated days an erased conversation counts in are dropped whole
first (``daily.py``) and computed again without it."""

_KEYS = "(SELECT arrayJoin({keys:Array(Tuple(String, String))}))"

_VISITOR_CONVERSATIONS = f"""
SELECT tenant_id, conversation_id, visitor_id FROM (
    SELECT tenant_id, conversation_id, JSONExtractString(payload, 'visitor_id') AS visitor_id
    FROM events WHERE type = 'conversation.created' AND conversation_id != ''
)
WHERE (tenant_id, visitor_id) IN {_KEYS}
UNION DISTINCT
SELECT tenant_id, conversation_id, sender_id FROM messages
WHERE sender_kind = 'visitor' AND (tenant_id, sender_id) IN {_KEYS}"""

# One query per screen: erased conversations among the batch's, and erased
# visitors among its conversation.created ones.
_SCREEN = """
SELECT 'c', tenant_id, conversation_id, toUUID('00000000-0000-0000-0000-000000000000')
FROM erased_conversations
WHERE (tenant_id, conversation_id) IN (SELECT arrayJoin({keys:Array(Tuple(String, String))}))
UNION ALL
SELECT 'v', tenant_id, visitor_id, any(event_id) FROM erased_visitors
WHERE (tenant_id, visitor_id) IN (SELECT arrayJoin({visitors:Array(Tuple(String, String))}))
GROUP BY tenant_id, visitor_id"""

# Which of a batch's tenants have any erasure record at all.
_TENANTS_ERASED = """
SELECT DISTINCT tenant_id FROM erased_conversations WHERE tenant_id IN {tenants:Array(String)}
UNION DISTINCT
SELECT DISTINCT tenant_id FROM erased_visitors WHERE tenant_id IN {tenants:Array(String)}"""

_DELETE = "DELETE FROM {table}{local} {on_cluster} WHERE (tenant_id, conversation_id) IN " + _KEYS


@dataclass(frozen=True, slots=True)
class Erasure:
    """One erasure event: what it asks to delete."""

    tenant_id: str
    event_id: uuid.UUID
    reason: str
    """The event type: ``visitor.erased`` or ``conversation.purged``."""
    visitor_id: str
    """The erased visitor (``visitor.erased``); empty for a purge."""
    conversation_ids: tuple[str, ...]


def erasure_of(
    event_type: str, tenant_id: str, conversation_id: str, payload: str, event_id: uuid.UUID
) -> Erasure | None:
    """The erasure an event asks for (its ``events`` row's values); None for other events."""
    if event_type == CONVERSATION_PURGED:
        ids: tuple[str, ...] = (conversation_id,) if conversation_id else ()
        return Erasure(tenant_id, event_id, event_type, "", ids)
    if event_type == VISITOR_ERASED:
        body: dict[str, Any] = orjson.loads(payload)
        listed = body.get("conversation_ids", [])
        ids = tuple(str(c) for c in listed if isinstance(c, str) and c)
        return Erasure(tenant_id, event_id, event_type, str(body.get("visitor_id", "")), ids)
    return None


def created_visitor(payload: str) -> str:
    """The ``visitor_id`` of a ``conversation.created`` payload (JSON); empty if none."""
    value = orjson.loads(payload).get("visitor_id", "")
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class Screened:
    """What :meth:`Eraser.screen` found among a batch's conversations."""

    erased: frozenset[Key]
    """Conversations erased (before, or just now as an erased visitor's)."""
    newly_erased: frozenset[Key]
    """Of those, the ones recorded by this screen: an erased visitor's conversation.created."""


class ErasureGuard:
    """Per store: the tenants that ever erased anything, and erasures kept apart from batches.

    Screening a batch costs a query (chDB's fixed cost per query is a large
    share of a batch's time), but a tenant with no erasure record at all has
    nothing to screen. So the guard remembers, per tenant, whether any record
    exists: looked up once per tenant, set at once by this process's own
    erasures (before their records are written), and, on a store other
    processes also write (a ClickHouse server shared by replicas), looked up
    again after each INSERT for the tenants still clean, which is the check
    for a replica's erasure run meanwhile. With chDB no other process can
    write the data, so what the guard knows is complete.

    Batches without erasures are stored concurrently (their INSERTs queue
    behind one another in the store's thread, so it never idles while the
    event loop prepares the next call); a batch with erasures waits until
    those in progress are done and runs alone, and new batches wait for it,
    so within a process an erasure never interleaves with a screen.
    """

    _by_store: ClassVar[weakref.WeakKeyDictionary[Store, ErasureGuard]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def of(cls, store: Store) -> ErasureGuard:
        """The guard of ``store`` (one per store, shared by every ingester in the process)."""
        guard = cls._by_store.get(store)
        if guard is None:
            guard = cls._by_store[store] = cls(store)
        return guard

    def __init__(self, store: Store) -> None:
        self._store = store
        self._erased: set[str] = set()
        """Tenants with erasure records (never forgotten: records are never removed)."""
        self._clean: set[str] = set()
        """Tenants without any, as last looked up."""
        self._batches = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._erasures = 0
        self._open = asyncio.Event()
        self._open.set()
        self._erasing = asyncio.Lock()

    def mark(self, tenants: Iterable[str]) -> None:
        """Note that ``tenants`` have (or are about to have) erasure records."""
        marked = set(tenants)
        self._erased |= marked
        self._clean -= marked

    async def erased_tenants(self, tenants: Iterable[str], *, recheck: bool = False) -> set[str]:
        """Those of ``tenants`` with any erasure record.

        Tenants never looked up are looked up; with ``recheck``, on a store
        other processes write, the clean ones are looked up again.
        """
        wanted = set(tenants)
        ask = wanted - self._erased
        if not (recheck and not self._store.exclusive):
            ask -= self._clean
        if ask:
            rows = await self._store.query(_TENANTS_ERASED, {"tenants": sorted(ask)})
            self.mark(str(r[0]) for r in rows)
            # An erasure of this process may have marked one meanwhile: marks win.
            self._clean |= ask - self._erased
        return wanted & self._erased

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Hold while storing a batch without erasures (many may at once)."""
        while not self._open.is_set():
            await self._open.wait()
        self._batches += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._batches -= 1
            if self._batches == 0:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def erasing(self) -> AsyncIterator[None]:
        """Hold while applying erasures: alone, after the batches in progress."""
        self._erasures += 1
        self._open.clear()
        try:
            async with self._erasing:
                await self._idle.wait()
                yield
        finally:
            self._erasures -= 1
            if self._erasures == 0:
                self._open.set()


class Eraser:
    """Deletes erased conversations' rows, and tells which conversations are erased.

    Args:
        store: where the data is.
        cluster: ClickHouse cluster name (``CLICKHOUSE_CLUSTER``): the DELETEs then
            target every shard's ``<table>_local`` ``ON CLUSTER``.
    """

    def __init__(self, store: Store, cluster: str | None = None) -> None:
        self._store = store
        self._cluster = cluster
        self._guard = ErasureGuard.of(store)
        self._deletes: list[str] = []
        for table in CONVERSATION_TABLES:
            statement = render(_DELETE.replace("{table}", table), cluster)
            assert statement is not None
            self._deletes.append(statement)

    async def erase(self, erasures: Sequence[Erasure]) -> frozenset[Key]:
        """Record and delete everything ``erasures`` ask for; the conversations erased."""
        # Before any record is written: a batch screened from now on sees these tenants.
        self._guard.mark(e.tenant_id for e in erasures)
        now = dt.datetime.now(dt.UTC)
        visitors = {(e.tenant_id, e.visitor_id): e for e in erasures if e.visitor_id}
        records: dict[Key, Erasure] = {}
        for e in erasures:
            records.update(((e.tenant_id, c), e) for c in e.conversation_ids)
        if visitors:
            found = await self._store.query(_VISITOR_CONVERSATIONS, {"keys": sorted(visitors)})
            for tenant_id, conversation_id, visitor_id in found:
                # Also the visitor's conversations chat's list did not name.
                records.setdefault((tenant_id, conversation_id), visitors[tenant_id, visitor_id])
        if visitors:
            await self._store.insert(
                "erased_visitors",
                [(t, v, e.event_id, now) for (t, v), e in visitors.items()],
                ("tenant_id", "visitor_id", "event_id", "erased_at"),
            )
        await self._record(records, now)
        keys = frozenset(records)
        await self.delete_rows(keys)
        log.info(
            "conversations_erased",
            events=len(erasures),
            visitors=len(visitors),
            conversations=len(keys),
        )
        return keys

    async def _record(self, records: dict[Key, Erasure], now: dt.datetime) -> None:
        if records:
            await self._store.insert(
                "erased_conversations",
                [(t, c, e.reason, e.event_id, now) for (t, c), e in records.items()],
                ("tenant_id", "conversation_id", "reason", "event_id", "erased_at"),
            )

    async def delete_rows(self, keys: Iterable[Key]) -> None:
        """Delete every row of the ``(tenant_id, conversation_id)`` conversations."""
        ordered = sorted(set(keys))
        if not ordered:
            return
        # The pre-aggregated days they count in (read while their summaries
        # exist) go live at once, and are dropped once the summaries are gone.
        days = await conversation_days(self._store, ordered)
        await mark_days(self._store, days)
        for statement in self._deletes:
            await self._store.command(statement, {"keys": ordered})
        await drop_days(self._store, days, self._cluster)

    async def screen(
        self, conversations: Iterable[Key], created: Iterable[tuple[Key, Key]]
    ) -> Screened:
        """Which of ``conversations`` are erased.

        ``created`` pairs each ``conversation.created`` of the batch with its visitor:
        ``((tenant_id, conversation_id), (tenant_id, visitor_id))``. A conversation
        created by an erased visitor is recorded as erased now (see ``newly_erased``).
        """
        keys = sorted(set(conversations))
        created = list(created)
        visitors = sorted({v for _, v in created if v[1]})
        erased: set[Key] = set()
        by_visitor: dict[Key, uuid.UUID] = {}
        if keys:
            rows = await self._store.query(_SCREEN, {"keys": keys, "visitors": visitors})
            for kind, tenant_id, key, event_id in rows:
                if kind == "c":
                    erased.add((tenant_id, key))
                else:
                    by_visitor[tenant_id, key] = event_id
        newly: dict[Key, Erasure] = {}
        for conversation, visitor in created:
            event_id = by_visitor.get(visitor)
            if event_id is not None and conversation not in erased:
                newly[conversation] = Erasure(
                    visitor[0], event_id, VISITOR_ERASED, visitor[1], (conversation[1],)
                )
        await self._record(newly, dt.datetime.now(dt.UTC))
        return Screened(frozenset(erased | set(newly)), frozenset(newly))
