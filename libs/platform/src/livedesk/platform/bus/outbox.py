"""Transactional outbox: an event commits with the state it describes, then is relayed.

Writers call :meth:`Outbox.add` inside their own transaction. The
:class:`OutboxRelay` (one active per database, chosen by an advisory lock)
publishes committed rows in id order with confirms and deletes them only
after the broker confirmed. With ``rounds_in_flight`` > 1, rounds overlap:
the next round is selected and published while earlier ones await their
confirms (one channel, so the broker receives them in order), and rounds are
settled in order. The default is 1 (one round at a time): overlapping showed
no clear gain on the shared 2-core machine (docs/benchmarks/assignment.md).
While RabbitMQ is unreachable the rows wait; the relay catches up when it
returns. Delivery is at-least-once.

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
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import asyncpg

from livedesk.platform.bus.envelope import Envelope, encode, validate
from livedesk.platform.bus.publisher import EncodedEvent, EventPublisher
from livedesk.platform.errors import DependencyError, PublishError, UnroutableError
from livedesk.platform.logging import get_logger
from livedesk.platform.metrics import OUTBOX_PARKED, OUTBOX_PENDING
from livedesk.platform.postgres import Connection
from livedesk.platform.tasks import cancel_and_wait

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


class _Round(NamedTuple):
    """Rows being published and, when their confirms are in, each one's outcome."""

    rows: list[asyncpg.Record]
    outcomes: asyncio.Future[list[PublishError | None]]


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
        rounds_in_flight: int = 1,
    ) -> None:
        self._dsn = dsn
        self._connect_publisher = connect_publisher
        self._publisher: EventPublisher | None = None
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry_interval = retry_interval
        self._unroutable_attempts = unroutable_attempts
        self._rounds_in_flight = max(1, rounds_in_flight)
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
                await cancel_and_wait(self._task)
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
        in_flight: deque[_Round] = deque()
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK):
                # Another pod relays this database; take over if it goes away.
                if await self._pause(self._poll_interval):
                    return
            await conn.add_listener(CHANNEL, self._on_notify)
            log.info("outbox_relay_leading")
            await self._relay(conn, in_flight)
        finally:
            # Left by an error or a cancel: the rows of rounds not settled stay in the
            # table and go out again (at-least-once).
            for round_ in in_flight:
                round_.outcomes.cancel()
            await asyncio.gather(*(r.outcomes for r in in_flight), return_exceptions=True)
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _relay(self, conn: asyncpg.Connection, in_flight: deque[_Round]) -> None:
        """Select, publish and settle rounds, up to ``rounds_in_flight`` awaiting confirms.

        The next round is selected and published while the previous one waits for its
        confirms (on the same channel, so the broker gets them in order); rounds are
        settled (confirmed rows deleted) in order, and a row is never deleted before
        its confirm. Until then no later round selects it again.
        """
        more = True  # rows may be waiting: select without waiting for a notify
        while True:
            more = more or self._wake.is_set()
            if more and len(in_flight) < self._rounds_in_flight:
                self._wake.clear()
                rows = await self._fetch(conn, in_flight)
                more = len(rows) >= self._batch_size
                if rows:
                    round_ = await self._start_round(rows)
                    if round_ is None:  # broker unreachable: wait, then retry the same rows
                        if await self._pause(self._retry_interval):
                            return
                        more = True
                        continue
                    in_flight.append(round_)
                continue
            if in_flight:
                head = in_flight[0]
                if not head.outcomes.done():
                    await self._confirms_or_wake(head, room=len(in_flight) < self._rounds_in_flight)
                if not head.outcomes.done():
                    continue  # woken with room for another round
                in_flight.popleft()
                if not await self._settle(conn, head):
                    # Broker trouble: settle what is in flight, wait, then start over.
                    while in_flight:
                        await self._settle(conn, in_flight.popleft())
                    if await self._pause(self._retry_interval):
                        return
                    more = True
                continue
            if self._stopping.is_set():
                return
            await self._pause(self._poll_interval)
            more = True

    async def _fetch(
        self, conn: asyncpg.Connection, in_flight: deque[_Round]
    ) -> list[asyncpg.Record]:
        """Rows due, in id order, except the id range of the rounds in flight."""
        low = min((r.rows[0]["id"] for r in in_flight), default=0)
        high = max((r.rows[-1]["id"] for r in in_flight), default=0)
        # Two index range scans: one filter would walk over every row in flight.
        rows: list[asyncpg.Record] = await conn.fetch(
            """SELECT * FROM (
                   (SELECT id, event_id, routing_key, body, attempts FROM outbox
                    WHERE next_attempt_at <= now() AND id < $2 ORDER BY id LIMIT $1)
                   UNION ALL
                   (SELECT id, event_id, routing_key, body, attempts FROM outbox
                    WHERE next_attempt_at <= now() AND id > $3 ORDER BY id LIMIT $1)
               ) due ORDER BY id LIMIT $1""",
            self._batch_size,
            low,
            high,
        )
        OUTBOX_PENDING.set(len(rows))
        return rows

    async def _start_round(self, rows: list[asyncpg.Record]) -> _Round | None:
        """Publish ``rows`` (confirms awaited in the background); None: broker unreachable."""
        if self._publisher is None:
            try:
                self._publisher = await self._connect_publisher()
            except DependencyError as exc:
                log.warning("outbox_broker_unreachable", error=str(exc), pending=len(rows))
                return None
        # Rows were validated when written; they go out as they are, without decoding.
        events = [EncodedEvent(str(r["event_id"]), r["routing_key"], r["body"]) for r in rows]
        outcomes = asyncio.ensure_future(self._publisher.publish_each(events))
        # Let the round's publishes write their frames before the next round's.
        await asyncio.sleep(0)
        return _Round(rows, outcomes)

    async def _confirms_or_wake(self, head: _Round, *, room: bool) -> None:
        """Wait for ``head``'s confirms, or (with room for another round) a notify."""
        if not room:
            await asyncio.wait([head.outcomes])
            return
        woken = asyncio.ensure_future(self._wake.wait())
        waiters: list[asyncio.Future[Any]] = [head.outcomes, woken]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    async def _settle(self, conn: asyncpg.Connection, round_: _Round) -> bool:
        """Delete the confirmed rows of a round, defer the unroutable; False on broker trouble."""
        done: list[int] = []
        unroutable = []
        trouble: PublishError | None = None
        for row, outcome in zip(round_.rows, await round_.outcomes, strict=True):
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
            log.warning(
                "outbox_publish_failed", error=str(trouble), pending=len(round_.rows) - len(done)
            )
            return False
        return True

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
