"""Transactional outbox: an event commits with the state it describes, then is relayed.

Writers call :meth:`Outbox.add` inside their own transaction. The
:class:`OutboxRelay` (one active per database, chosen by an advisory lock)
publishes committed rows in id order with confirms and deletes them only
after the broker confirmed. While RabbitMQ is unreachable the rows wait; the
relay catches up when it returns. Delivery is at-least-once.

An event the broker returns as unroutable (no queue bound to its type, e.g.
while consumers are still starting) is retried with backoff without holding
back the events behind it, and after ``unroutable_attempts`` tries is parked
in ``outbox_unroutable`` (metric ``livedesk_outbox_parked_total``), never
silently dropped. Order: events leave in commit order; after a broker failure
in the middle of a batch, a later event may overtake an earlier one that is
retried, so consumers order by ``seq`` / ``occurred_at`` where it matters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from livedesk.platform.bus.envelope import Envelope, encode, validate
from livedesk.platform.bus.publisher import EncodedEvent, EventPublisher
from livedesk.platform.errors import DependencyError, PublishError, UnroutableError
from livedesk.platform.logging import get_logger
from livedesk.platform.metrics import OUTBOX_PARKED, OUTBOX_PENDING
from livedesk.platform.postgres import Connection

__all__ = ["Outbox", "OutboxRelay"]

log = get_logger("livedesk.bus.outbox")

CHANNEL = "livedesk_outbox"
_RELAY_LOCK = 0x4C4445534B4F42  # "LDESKOB": one relay per database


class Outbox:
    """Adds events to the outbox table of the connection's database."""

    @staticmethod
    async def add(conn: Connection, envs: Sequence[Envelope], *, notify: bool = True) -> None:
        """Queue ``envs``; they are published only if the surrounding transaction commits.

        ``notify`` wakes the relay at commit (NOTIFY) instead of at its next poll.
        PostgreSQL serializes the commits of notifying transactions on one global
        lock, so the hot path (one transaction per chat message) passes False and
        relies on the relay's short poll; rare, latency-sensitive events notify.
        """
        for env in envs:
            validate(env)
        # One statement for the whole batch (executemany would run one INSERT per event).
        await conn.execute(
            """INSERT INTO outbox (event_id, routing_key, body)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[])""",
            [e.event_id for e in envs],
            [e.type for e in envs],
            [encode(e) for e in envs],
        )
        if notify:
            await conn.execute("SELECT pg_notify($1, '')", CHANNEL)


class OutboxRelay:
    """Publishes outbox rows in order; runs until :meth:`stop`.

    The publisher is made by ``connect_publisher`` when first needed, and made
    again after it fails to connect, so a service whose broker is down still
    starts, commits its events, and relays them once the broker is back.
    """

    def __init__(
        self,
        dsn: str,
        connect_publisher: Callable[[], Awaitable[EventPublisher]],
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        retry_interval: float = 1.0,
        unroutable_attempts: int = 20,
    ) -> None:
        self._dsn = dsn
        self._connect_publisher = connect_publisher
        self._publisher: EventPublisher | None = None
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry_interval = retry_interval
        self._unroutable_attempts = unroutable_attempts
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def start(self) -> None:
        """Run the relay in the background."""
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Flush what is committed (within ``flush_timeout``), then stop."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), flush_timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.close()

    async def _run(self) -> None:
        # The relay must outlive any failure: events wait in the table meanwhile.
        while not self._stopping.is_set():
            try:
                await self._lead()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox_relay_db_error", error=repr(exc))
                await self._pause(self._retry_interval)
            except Exception:
                log.exception("outbox_relay_failed")
                await self._drop_publisher()
                await self._pause(self._retry_interval)

    async def _drop_publisher(self) -> None:
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.close()
            self._publisher = None

    async def _lead(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(self._dsn, timeout=10)
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK):
                # Another pod relays this database; take over if it goes away.
                if await self._pause(self._poll_interval):
                    return
            await conn.add_listener(CHANNEL, self._on_notify)
            log.info("outbox_relay_leading")
            while True:
                sent = await self._relay_batch(conn)
                if sent < 0:  # broker trouble: wait, then retry the same rows
                    if await self._pause(self._retry_interval):
                        return
                elif sent < self._batch_size:
                    if self._stopping.is_set():
                        return
                    await self._pause(self._poll_interval)
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _relay_batch(self, conn: asyncpg.Connection) -> int:
        """Publish one batch; rows handled, or -1 when the broker is in trouble."""
        self._wake.clear()
        rows = await conn.fetch(
            """SELECT id, event_id, routing_key, body, attempts FROM outbox
               WHERE next_attempt_at <= now()
               ORDER BY id LIMIT $1""",
            self._batch_size,
        )
        OUTBOX_PENDING.set(len(rows))
        if not rows:
            return 0
        if self._publisher is None:
            try:
                self._publisher = await self._connect_publisher()
            except DependencyError as exc:
                log.warning("outbox_broker_unreachable", error=str(exc), pending=len(rows))
                return -1
        # Rows were validated when written; they go out as they are, without decoding.
        sendable = list(rows)
        done: list[int] = []
        events = [EncodedEvent(str(r["event_id"]), r["routing_key"], r["body"]) for r in rows]
        outcomes = await self._publisher.publish_each(events)
        unroutable = []
        trouble: PublishError | None = None
        for row, outcome in zip(sendable, outcomes, strict=True):
            if outcome is None:
                done.append(row["id"])
            elif isinstance(outcome, UnroutableError):
                unroutable.append(row)
            else:
                trouble = trouble or outcome
        await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", done)
        self.published += len(done)
        if unroutable:
            await self._defer(conn, unroutable)
        if trouble is not None:
            log.warning("outbox_publish_failed", error=str(trouble), pending=len(rows) - len(done))
            return -1
        return len(rows)

    async def _defer(self, conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> None:
        """Retry unroutable events later without holding back the rest; park them at last."""
        park = [r["id"] for r in rows if r["attempts"] + 1 >= self._unroutable_attempts]
        retry = [r["id"] for r in rows if r["id"] not in park]
        if retry:
            # Back off 1 s, 2 s, 4 s ... up to a minute: consumers that bind late still get them.
            await conn.execute(
                """UPDATE outbox SET attempts = attempts + 1,
                          next_attempt_at = now() + least(power(2, attempts), 60) * interval '1 s'
                   WHERE id = ANY($1::bigint[])""",
                retry,
            )
            log.warning("outbox_event_unroutable", retry_ids=retry)
        if park:
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO outbox_unroutable
                           (id, event_id, routing_key, body, created_at, attempts)
                       SELECT id, event_id, routing_key, body, created_at, attempts + 1
                       FROM outbox WHERE id = ANY($1::bigint[])
                       ON CONFLICT DO NOTHING""",
                    park,
                )
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", park)
            OUTBOX_PARKED.inc(len(park))
            log.error("outbox_event_parked", ids=park, table="outbox_unroutable")

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _pause(self, seconds: float) -> bool:
        """Wait for a notify, a stop or ``seconds``; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        return self._stopping.is_set()
