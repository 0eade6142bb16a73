"""The transactional outbox against real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest
from aio_pika.abc import AbstractRobustConnection

from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.contracts.events.v1.csat_pb2 import CsatSubmitted
from livedesk.platform.bus import Envelope, EventPublisher, connect, new_event
from livedesk.platform.bus.outbox import Outbox, OutboxRelay
from livedesk.platform.bus.publisher import EncodedEvent
from livedesk.platform.errors import PublishError
from livedesk.platform.ids import uuid7_str
from livedesk.platform.postgres import create_pool, migrate
from livedesk.platform.testing import TcpProxy, wait_until
from livedesk.platform.testing.bus import running_consumer
from livedesk.platform.testing.pytest_plugin import BusNames

pytestmark = pytest.mark.integration


def created(n: int) -> Envelope:
    return new_event(
        ConversationCreated(inbox_id=f"inbox-{n}"),
        tenant_id=uuid7_str(),
        producer="test",
        conversation_id=uuid7_str(),
    )


@pytest.fixture
def connection(amqp_connection: AbstractRobustConnection) -> AbstractRobustConnection:
    return amqp_connection


async def test_committed_events_are_relayed_in_order_and_rolled_back_ones_never(
    connection: AbstractRobustConnection, bus_names: BusNames, pg_database: str
) -> None:
    pool = await create_pool(pg_database)
    received: list[str] = []

    async def handler(env: Envelope) -> None:
        received.append(env.event_id)

    async def make_publisher() -> EventPublisher:
        return await EventPublisher.create(connection, bus_names.exchange, timeout=5)

    relay = OutboxRelay(pg_database, make_publisher, batch_size=7, poll_interval=0.2)
    try:
        await migrate(pool, "livedesk.platform.migrations")
        async with running_consumer(connection, bus_names, handler):
            relay.start()
            committed = [created(i) for i in range(30)]
            for i in range(0, 30, 3):
                async with pool.acquire() as conn, conn.transaction():
                    await Outbox.add(conn, committed[i : i + 3])
            rolled_back = created(99)
            with pytest.raises(RuntimeError):
                async with pool.acquire() as conn, conn.transaction():
                    await Outbox.add(conn, [rolled_back])
                    raise RuntimeError("abort the transaction")

            await wait_until(
                lambda: _at_least(received, 30), timeout=20, what="all committed events relayed"
            )
            await wait_until(lambda: _empty_outbox(pool), timeout=10, what="outbox emptied")
        assert received == [e.event_id for e in committed]
        assert rolled_back.event_id not in received
    finally:
        await relay.stop()
        await pool.close()


async def test_events_wait_while_the_broker_is_unreachable_then_all_go_out(
    connection: AbstractRobustConnection, bus_names: BusNames, pg_database: str
) -> None:
    pool = await create_pool(pg_database)
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    proxied_url = bus_names.amqp_url.replace(":5672", f":{proxy.port}")
    received: set[str] = set()

    async def handler(env: Envelope) -> None:
        received.add(env.event_id)

    async def make_publisher() -> EventPublisher:
        conn = await connect(proxied_url, "test-relay", timeout=2)
        return await EventPublisher.create(conn, bus_names.exchange, 2, owns_connection=True)

    relay = OutboxRelay(
        pg_database, make_publisher, batch_size=50, poll_interval=0.2, retry_interval=0.2
    )
    try:
        await migrate(pool, "livedesk.platform.migrations")
        async with running_consumer(connection, bus_names, handler):
            proxy.cut()  # the broker is "down" before the relay ever connects
            relay.start()
            first = [created(i) for i in range(20)]
            async with pool.acquire() as conn, conn.transaction():
                await Outbox.add(conn, first)
            await wait_until(
                lambda: _pending(pool, 20), timeout=10, what="events waiting in the outbox"
            )
            assert not received

            proxy.heal()
            await wait_until(lambda: _has_all(received, first), timeout=30, what="catch-up")

            # Cut an established connection mid-flow: still nothing lost.
            proxy.cut()
            second = [created(i) for i in range(20, 60)]
            for i in range(0, 40, 10):
                async with pool.acquire() as conn, conn.transaction():
                    await Outbox.add(conn, second[i : i + 10])
            proxy.heal()
            await wait_until(lambda: _has_all(received, second), timeout=40, what="recovery")
            await wait_until(lambda: _empty_outbox(pool), timeout=10, what="outbox emptied")
    finally:
        await relay.stop()
        await proxy.close()
        await pool.close()


async def _at_least(items: list[str], n: int) -> bool:
    return len(items) >= n


async def _has_all(received: set[str], events: list[Envelope]) -> bool:
    return {e.event_id for e in events} <= received


async def _pending(pool: asyncpg.Pool, n: int) -> bool:
    count = await pool.fetchval("SELECT count(*) FROM outbox")
    return bool(count == n)


async def _empty_outbox(pool: asyncpg.Pool) -> bool:
    return await _pending(pool, 0)


async def test_unroutable_event_does_not_hold_back_others_and_is_parked(
    connection: AbstractRobustConnection, bus_names: BusNames, pg_database: str
) -> None:
    pool = await create_pool(pg_database)
    received: list[str] = []

    async def handler(env: Envelope) -> None:
        received.append(env.event_id)

    async def make_publisher() -> EventPublisher:
        return await EventPublisher.create(connection, bus_names.exchange, timeout=5)

    relay = OutboxRelay(pg_database, make_publisher, poll_interval=0.2, unroutable_attempts=2)
    try:
        await migrate(pool, "livedesk.platform.migrations")
        async with running_consumer(connection, bus_names, handler):  # binds conversation.created
            nobody_wants = new_event(
                CsatSubmitted(rating=5), tenant_id=uuid7_str(), producer="test"
            )
            after = [created(i) for i in range(5)]
            async with pool.acquire() as conn, conn.transaction():
                await Outbox.add(conn, [nobody_wants, *after])
            relay.start()
            await wait_until(lambda: _at_least(received, 5), timeout=20, what="later events")

            async def parked() -> bool:
                row = await pool.fetchrow("SELECT * FROM outbox_unroutable")
                return row is not None and str(row["event_id"]) == nobody_wants.event_id

            await wait_until(parked, timeout=20, what="unroutable event parked")
            await wait_until(lambda: _empty_outbox(pool), timeout=10, what="outbox emptied")
        assert received == [e.event_id for e in after]
    finally:
        await relay.stop()
        await pool.close()


class _HeldPublisher(EventPublisher):
    """A real publisher whose caller learns of one event's confirm only when released
    (and of its neighbours' in the same call)."""

    held_id = ""
    release: asyncio.Event

    async def publish_each(
        self, events: Sequence[Envelope | EncodedEvent]
    ) -> list[PublishError | None]:
        outcomes = await super().publish_each(events)
        if any(e.event_id == self.held_id for e in events):
            await self.release.wait()
        return outcomes


async def test_next_round_goes_out_while_confirms_are_awaited_and_rows_go_only_after_theirs(
    connection: AbstractRobustConnection, bus_names: BusNames, pg_database: str
) -> None:
    pool = await create_pool(pg_database)
    received: list[str] = []
    events = [created(i) for i in range(20)]
    release = asyncio.Event()

    async def handler(env: Envelope) -> None:
        received.append(env.event_id)

    async def make_publisher() -> EventPublisher:
        pub = await _HeldPublisher.create(connection, bus_names.exchange, timeout=5)
        assert isinstance(pub, _HeldPublisher)
        pub.held_id, pub.release = events[1].event_id, release
        return pub

    relay = OutboxRelay(
        pg_database, make_publisher, batch_size=5, poll_interval=0.2, rounds_in_flight=2
    )
    try:
        await migrate(pool, "livedesk.platform.migrations")
        async with running_consumer(connection, bus_names, handler):
            async with pool.acquire() as conn, conn.transaction():
                await Outbox.add(conn, events)
            relay.start()
            # Round 1 (events 0-4) waits for a confirm; round 2 (5-9) is already out.
            await wait_until(lambda: _at_least(received, 10), timeout=20, what="two rounds out")
            # Neither is marked published: round 1 lacks a confirm, round 2 settles after it.
            assert await _pending(pool, 20)
            assert received == [e.event_id for e in events[:10]]  # no third round in flight

            release.set()
            await wait_until(lambda: _at_least(received, 20), timeout=20, what="the rest")
            await wait_until(lambda: _empty_outbox(pool), timeout=10, what="outbox emptied")
        assert received == [e.event_id for e in events]
        assert relay.published == 20
    finally:
        release.set()
        await relay.stop()
        await pool.close()


async def test_many_overlapping_rounds_keep_commit_order_and_lose_nothing(
    connection: AbstractRobustConnection, bus_names: BusNames, pg_database: str
) -> None:
    pool = await create_pool(pg_database)
    received: list[str] = []

    async def handler(env: Envelope) -> None:
        received.append(env.event_id)

    async def make_publisher() -> EventPublisher:
        return await EventPublisher.create(connection, bus_names.exchange, timeout=5)

    relay = OutboxRelay(
        pg_database, make_publisher, batch_size=13, poll_interval=0.2, rounds_in_flight=3
    )
    committed = [created(i) for i in range(600)]
    try:
        await migrate(pool, "livedesk.platform.migrations")
        async with running_consumer(connection, bus_names, handler):
            relay.start()
            # Commits keep coming while rounds are in flight (one transaction at a time,
            # so ids follow commit order).
            for i in range(0, len(committed), 4):
                async with pool.acquire() as conn, conn.transaction():
                    await Outbox.add(conn, committed[i : i + 4])
            await wait_until(lambda: _at_least(received, 600), timeout=60, what="all relayed")
            await wait_until(lambda: _empty_outbox(pool), timeout=10, what="outbox emptied")
        assert received == [e.event_id for e in committed]
    finally:
        await relay.stop()
        await pool.close()
