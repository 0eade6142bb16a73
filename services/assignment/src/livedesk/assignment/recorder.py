"""The durable record: routing changes and their events, group-committed to PostgreSQL.

Redis decides; PostgreSQL keeps the truth it is rebuilt from. Callers hand
the changes of one script call to :meth:`Recorder.record` and wait: many
concurrent calls share one transaction (group commit). In it:

- the tenant's generation is checked under a shared advisory lock; a rebuild
  holds the exclusive lock while it reads PostgreSQL and rewrites Redis, so a
  change made on Redis state that has since been lost is refused (the caller
  redoes its operation on the rebuilt state) and never recorded;
- each conversation row is upserted only when the change is newer than the
  stored version, so records arriving out of order never go back in time;
- every binding goes into ``assignments``; the events of the changes that
  applied go into the outbox, in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from livedesk.assignment.store import Change, RoutingStore
from livedesk.contracts.events.v1.common_pb2 import Priority, QueueReason
from livedesk.contracts.events.v1.conversation_pb2 import (
    AssignedBy,
    ConversationAssigned,
    ConversationQueued,
)
from livedesk.platform.bus import Envelope
from livedesk.platform.bus.outbox import Outbox
from livedesk.platform.ids import uuid7_str
from livedesk.platform.logging import get_logger
from livedesk.platform.tracing import current_traceparent

__all__ = ["LOCK_CLASS", "PRODUCER", "Recorder", "events_of"]

log = get_logger("livedesk.assignment.recorder")

PRODUCER = "assignment"
#: First key of the per-tenant advisory locks (the second is hashtext(tenant_id)).
LOCK_CLASS = 0x4C44_4153

_UPSERT = """
INSERT INTO conversations AS c (tenant_id, conversation_id, state, version, inbox_id, priority,
    required_skills, team_id, agent_id, excluded_agent, queue_reason, created_at, queued_at,
    assigned_at)
SELECT t, cid, st, ver, inbox, pr, string_to_array(sk, ','), tm, nullif(ag, ''), x, rs,
       to_timestamp(cms / 1000.0), to_timestamp(qms / 1000.0),
       CASE WHEN ams > 0 THEN to_timestamp(ams / 1000.0) END
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::int[],
            $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::bigint[],
            $13::bigint[], $14::bigint[])
     AS u(t, cid, st, ver, inbox, pr, sk, tm, ag, x, rs, cms, qms, ams)
ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET
    state = EXCLUDED.state, version = EXCLUDED.version, priority = EXCLUDED.priority,
    required_skills = EXCLUDED.required_skills, team_id = EXCLUDED.team_id,
    agent_id = EXCLUDED.agent_id, excluded_agent = EXCLUDED.excluded_agent,
    queue_reason = EXCLUDED.queue_reason, queued_at = EXCLUDED.queued_at,
    assigned_at = EXCLUDED.assigned_at,
    first_reply_at = CASE WHEN EXCLUDED.assigned_at IS NOT DISTINCT FROM c.assigned_at
                          THEN c.first_reply_at END,
    updated_at = now()
WHERE c.version < EXCLUDED.version
RETURNING tenant_id, conversation_id
"""

_HISTORY = """
INSERT INTO assignments (tenant_id, conversation_id, version, agent_id, assigned_by, assigned_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int[],
                     $6::timestamptz[])
ON CONFLICT DO NOTHING
"""


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def events_of(tenant_id: str, change: Change) -> list[Envelope]:
    """The events announcing ``change`` (none for releases and resolutions)."""
    if change.state == "assigned":
        env = _envelope(tenant_id, change.conversation_id, "conversation.assigned")
        env.conversation_assigned.CopyFrom(
            ConversationAssigned(
                agent_id=change.agent_id,
                previous_agent_id=change.previous_agent,
                assigned_by=AssignedBy.ValueType(change.assigned_by or AssignedBy.ASSIGNED_BY_AUTO),
                team_id=change.team_id,
                actor_id=change.actor_id,
            )
        )
        return [env]
    if change.state == "waiting":
        env = _envelope(tenant_id, change.conversation_id, "conversation.queued")
        env.conversation_queued.CopyFrom(
            ConversationQueued(
                position=change.position,
                reason=QueueReason.ValueType(change.reason),
                team_id=change.team_id,
                previous_agent_id=change.previous_agent,
                priority=Priority.ValueType(change.priority),
            )
        )
        return [env]
    return []


def _envelope(tenant_id: str, conversation_id: str, event_type: str) -> Envelope:
    """What ``new_event`` makes, built directly (this runs once per decision), payload unset.

    Not validated here: ``Outbox.add`` validates every envelope it stores.
    """
    env = Envelope(
        event_id=uuid7_str(),
        type=event_type,
        tenant_id=tenant_id,
        conversation_id=conversation_id,
        producer=PRODUCER,
        traceparent=current_traceparent(),
    )
    env.occurred_at.FromNanoseconds(time.time_ns())
    return env


@dataclass
class _Item:
    tenant_id: str
    gen: int
    changes: Sequence[Change]
    events: Sequence[Envelope]
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Recorder:
    """Group-commits routing changes; one instance per replica."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: RoutingStore,
        *,
        batch_size: int = 500,
        concurrency: int = 2,
    ) -> None:
        self._pool = pool
        self._store = store
        self._batch_size = batch_size
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"recorder-{i}") for i in range(concurrency)
        ]
        self._confirming: set[asyncio.Task[None]] = set()
        self.recorded = 0

    async def record(
        self,
        tenant_id: str,
        gen: int,
        changes: Sequence[Change],
        events: Sequence[Envelope] = (),
    ) -> bool:
        """Make ``changes`` durable with their events (``events`` first); False when stale.

        Stale means the tenant's Redis state was rebuilt after the changes were
        made: they are lost with it, and the caller must redo its operation.
        """
        if not changes and not events:
            return True
        item = _Item(tenant_id, gen, changes, events)
        self._queue.put_nowait(item)
        return await item.done

    async def close(self) -> None:
        """Stop after the batches in flight."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._confirming, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].changes)
            # Group commit: everything queued meanwhile, up to batch_size changes.
            while not self._queue.empty() and size < self._batch_size:
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item.changes)
            try:
                results = await self._flush_with_retry(batch)
            except Exception as exc:
                log.warning("record_failed", error=repr(exc), items=len(batch))
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            for item, ok in zip(batch, results, strict=True):
                if not item.done.done():
                    item.done.set_result(ok)
            # Off the callers' path, and off this task (it must never block or swallow the
            # cancellation of close()): a mark left behind only costs a harmless re-record.
            task = asyncio.create_task(self._confirm(batch, results), name="recorder-confirm")
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)

    async def _confirm(self, batch: list[_Item], live: list[bool]) -> None:
        """Forget the repair marks of the changes now durable, one call per tenant."""
        by_tenant: dict[str, list[Change]] = {}
        for item, ok in zip(batch, live, strict=True):
            if ok and item.changes:
                by_tenant.setdefault(item.tenant_id, []).extend(item.changes)
        with contextlib.suppress(Exception):  # the repair loop re-checks what is left
            for tenant, changes in by_tenant.items():
                await self._store.confirm_durable(tenant, changes)

    async def _flush_with_retry(self, batch: list[_Item]) -> list[bool]:
        for attempt in range(3):
            try:
                return await self._flush(batch)
            except asyncpg.DeadlockDetectedError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _plan(
        batch: list[_Item], live: list[bool]
    ) -> tuple[dict[tuple[str, str], Change], list[tuple[str, Change]]]:
        """The newest change per conversation, and every binding, of the live items."""
        latest: dict[tuple[str, str], Change] = {}
        history: list[tuple[str, Change]] = []
        for item, ok in zip(batch, live, strict=True):
            if not ok:
                continue
            for ch in item.changes:
                key = (item.tenant_id, ch.conversation_id)
                old = latest.get(key)
                if old is None or old.epoch < ch.epoch:
                    latest[key] = ch
                if ch.state == "assigned":
                    history.append((item.tenant_id, ch))
        return latest, history

    async def _flush(self, batch: list[_Item]) -> list[bool]:
        tenants = sorted({i.tenant_id for i in batch})
        # Built before the transaction (assuming every item live, as it nearly always
        # is), so the connection and the tenants' locks are held for the SQL only.
        all_live = [True] * len(batch)
        latest, history = self._plan(batch, all_live)
        events = {key: events_of(key[0], ch) for key, ch in latest.items()}
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT count(pg_advisory_xact_lock_shared($1, hashtext(t)))"
                " FROM unnest($2::text[]) t",
                LOCK_CLASS,
                tenants,
            )
            gens = {
                r["tenant_id"]: r["gen"]
                for r in await conn.fetch(
                    "SELECT tenant_id, gen FROM redis_generations WHERE tenant_id = ANY($1)",
                    tenants,
                )
            }
            live = [gens.get(i.tenant_id) == i.gen for i in batch]
            if not all(live):
                latest, history = self._plan(batch, live)
                events = {}
            ordered = sorted(latest.items())
            applied: set[tuple[str, str]] = set()
            if ordered:
                cols: list[list[object]] = [[] for _ in range(14)]
                for (tenant, cid), ch in ordered:
                    row = (
                        tenant, cid, ch.state, ch.epoch, ch.inbox_id, ch.priority,
                        ",".join(ch.skills), ch.team_id, ch.agent_id, ch.excluded_agent,
                        ch.reason, ch.created_ms, ch.queued_ms, ch.assigned_ms,
                    )  # fmt: skip
                    for col, value in zip(cols, row, strict=True):
                        col.append(value)
                rows = await conn.fetch(_UPSERT, *cols)
                applied = {(r["tenant_id"], r["conversation_id"]) for r in rows}
            if history:
                history.sort(key=lambda h: (h[0], h[1].conversation_id, h[1].epoch))
                await conn.execute(
                    _HISTORY,
                    [t for t, _ in history],
                    [c.conversation_id for _, c in history],
                    [c.epoch for _, c in history],
                    [c.agent_id for _, c in history],
                    [c.assigned_by or 1 for _, c in history],
                    [_ts(c.assigned_ms) for _, c in history],
                )
            envs: list[Envelope] = []
            for item, ok in zip(batch, live, strict=True):
                if not ok:
                    continue
                envs.extend(item.events)
                for ch in item.changes:
                    key = (item.tenant_id, ch.conversation_id)
                    if key in applied and latest[key] is ch:
                        envs.extend(events[key] if key in events else events_of(key[0], ch))
            if envs:
                await Outbox.add(conn, envs)
        self.recorded += len(latest)
        return live
