"""The event bus against the real RabbitMQ (and PostgreSQL for idempotency)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import structlog
from aio_pika.abc import AbstractRobustConnection

from livedesk.contracts.events.v1.conversation_pb2 import (
    ConversationCreated,
    ConversationResolved,
)
from livedesk.platform.bus import (
    DUPLICATE,
    Envelope,
    EventConsumer,
    EventPublisher,
    Handler,
    QueueTopology,
    connect,
    new_event,
    payload_of,
)
from livedesk.platform.bus.consumer import ATTEMPT_HEADER, REASON_HEADER
from livedesk.platform.bus.idempotency import PgIdempotency
from livedesk.platform.bus.publisher import WRITE_CHUNK
from livedesk.platform.errors import DependencyError, PublishError, UnroutableError
from livedesk.platform.ids import uuid7_str
from livedesk.platform.postgres import Connection, create_pool, migrate
from livedesk.platform.testing import TcpProxy, wait_until
from livedesk.platform.testing.bus import get_one, publish_raw, running_consumer
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.tracing import parse_traceparent, trace_context

pytestmark = pytest.mark.integration

TENANT = "0190b4a2-7c1e-7d3a-9f00-2b5c8e4d1a6f"


def created(inbox: str = "inbox-1") -> Envelope:
    """A conversation.created event."""
    return new_event(
        ConversationCreated(inbox_id=inbox),
        tenant_id=TENANT,
        producer="test",
        conversation_id=uuid7_str(),
    )


@pytest.fixture
def connection(amqp_connection: AbstractRobustConnection) -> AbstractRobustConnection:
    return amqp_connection


@pytest.fixture
async def publisher(
    connection: AbstractRobustConnection, bus_names: BusNames
) -> AsyncIterator[EventPublisher]:
    pub = await EventPublisher.create(connection, bus_names.exchange, timeout=5)
    yield pub
    await pub.close()


async def test_round_trip_decodes_envelope_and_keeps_trace(
    connection: AbstractRobustConnection, publisher: EventPublisher, bus_names: BusNames
) -> None:
    seen: asyncio.Queue[tuple[Envelope, object]] = asyncio.Queue()

    async def handler(env: Envelope) -> None:
        seen.put_nowait((env, structlog.contextvars.get_contextvars().get("trace_id")))

    async with running_consumer(connection, bus_names, handler):
        with trace_context(None) as trace_id:
            sent = created("inbox-42")
        await publisher.publish(sent)
        got, logged_trace = await asyncio.wait_for(seen.get(), 10)

    assert got == sent
    assert got.type == "conversation.created"
    assert payload_of(got).inbox_id == "inbox-42"  # type: ignore[attr-defined]
    parsed = parse_traceparent(got.traceparent)
    assert parsed is not None
    assert parsed[0] == trace_id
    assert logged_trace == trace_id


async def test_failing_handler_is_retried_then_dead_lettered_and_queue_moves_on(
    connection: AbstractRobustConnection, publisher: EventPublisher, bus_names: BusNames
) -> None:
    attempts: dict[str, int] = {}
    handled: asyncio.Queue[str] = asyncio.Queue()
    poison = created("poison")

    async def handler(env: Envelope) -> None:
        attempts[env.event_id] = attempts.get(env.event_id, 0) + 1
        if env.event_id == poison.event_id:
            raise RuntimeError("cannot handle this one")
        handled.put_nowait(env.event_id)

    async with running_consumer(connection, bus_names, handler, retry_delays_ms=(50, 100)):
        await publisher.publish(poison)
        dead = await get_one(connection, bus_names.queue("q") + ".dlq")
        good = created("after")
        await publisher.publish(good)
        assert await asyncio.wait_for(handled.get(), 10) == good.event_id

    assert attempts[poison.event_id] == 3  # first try + two delayed retries
    assert dead.message_id == poison.event_id
    assert dead.headers[REASON_HEADER] == "handler_failed"
    assert dead.headers[ATTEMPT_HEADER] == 2
    assert "cannot handle this one" in str(dead.headers["x-livedesk-error"])


async def test_undecodable_body_goes_straight_to_dead_letter(
    connection: AbstractRobustConnection, publisher: EventPublisher, bus_names: BusNames
) -> None:
    calls: list[str] = []
    handled: asyncio.Queue[str] = asyncio.Queue()

    async def handler(env: Envelope) -> None:
        calls.append(env.event_id)
        handled.put_nowait(env.event_id)

    async with running_consumer(connection, bus_names, handler):
        await publish_raw(connection, bus_names.exchange, "conversation.created", b"\xff\x00junk")
        dead = await get_one(connection, bus_names.queue("q") + ".dlq")
        good = created()
        await publisher.publish(good)
        assert await asyncio.wait_for(handled.get(), 10) == good.event_id

    assert dead.body == b"\xff\x00junk"
    assert dead.headers[REASON_HEADER] == "undecodable"
    assert calls == [good.event_id]


async def test_same_event_delivered_twice_is_handled_once(
    connection: AbstractRobustConnection,
    publisher: EventPublisher,
    bus_names: BusNames,
    pg_database: str,
) -> None:
    pool = await create_pool(pg_database)
    try:
        await migrate(pool, "livedesk.platform.migrations")
        await pool.execute("CREATE TABLE effects (event_id uuid, note text)")
        outcomes: asyncio.Queue[object] = asyncio.Queue()

        async def effect(env: Envelope, conn: Connection) -> None:
            await conn.execute("INSERT INTO effects VALUES ($1, 'x')", env.event_id)

        once = PgIdempotency(pool, "test-consumer").wrap(effect)

        async def handler(env: Envelope) -> object:
            result = await once(env)
            outcomes.put_nowait(result)
            return result

        event = created()
        async with running_consumer(connection, bus_names, handler):
            await publisher.publish(event)
            await publisher.publish(event)  # a redelivery, as the broker may make
            results = [await asyncio.wait_for(outcomes.get(), 10) for _ in range(2)]

        assert results == [None, DUPLICATE]
        assert await pool.fetchval("SELECT count(*) FROM effects") == 1
    finally:
        await pool.close()


async def test_failed_handler_leaves_no_idempotency_record(pg_database: str) -> None:
    pool = await create_pool(pg_database)
    try:
        await migrate(pool, "livedesk.platform.migrations")
        tries = 0

        async def flaky(env: Envelope, conn: Connection) -> None:
            nonlocal tries
            tries += 1
            if tries == 1:
                raise RuntimeError("first try fails")

        once = PgIdempotency(pool, "c").wrap(flaky)
        event = created()
        with pytest.raises(RuntimeError):
            await once(event)
        assert await once(event) is None  # retried for real, not skipped
        assert await once(event) == DUPLICATE
        assert tries == 2
    finally:
        await pool.close()


async def test_unroutable_event_raises(publisher: EventPublisher) -> None:
    # No queue is bound on this test's private exchange: mandatory makes it come back.
    with pytest.raises(UnroutableError):
        await publisher.publish(created())


async def test_publish_each_settles_every_event_of_a_large_batch_on_its_own(
    connection: AbstractRobustConnection, publisher: EventPublisher, bus_names: BusNames
) -> None:
    received: list[str] = []

    async def handler(env: Envelope) -> None:
        received.append(env.event_id)

    # More events than one socket write carries; every third one has no queue bound.
    events = [created() if i % 3 else _resolved() for i in range(2 * WRITE_CHUNK + 7)]
    broken = created()
    broken.event_id = "not-a-uuid"
    async with running_consumer(connection, bus_names, handler):
        outcomes = await publisher.publish_each([*events, broken])
        routable = [e.event_id for e in events if e.type == "conversation.created"]
        await wait_until(
            lambda: _equals(len(received), len(routable)), timeout=15, what="all delivered"
        )
    for env, outcome in zip(events, outcomes, strict=False):
        if env.type == "conversation.created":
            assert outcome is None
        else:
            assert isinstance(outcome, UnroutableError)
            assert env.event_id in str(outcome)
    assert isinstance(outcomes[-1], PublishError)  # invalid: refused before sending
    assert received == routable  # in publish order, each once


async def test_consumer_subscribes_again_when_the_broker_cancels_it(
    connection: AbstractRobustConnection, publisher: EventPublisher, bus_names: BusNames
) -> None:
    handled: set[str] = set()

    async def handler(env: Envelope) -> None:
        handled.add(env.event_id)

    async with running_consumer(connection, bus_names, handler) as consumer:
        first = created("first")
        await publisher.publish(first)
        await wait_until(lambda: _contains(handled, {first.event_id}), timeout=10, what="first")
        # Deleting the queue cancels the subscription; the channel re-declares the queue
        # and its bindings, and the consumer subscribes again.
        channel = await connection.channel()
        await channel.queue_delete(consumer.topology.name)
        await channel.close()

        async def published_and_handled() -> bool:
            again = created("again")
            try:
                await publisher.publish(again)
            except UnroutableError:
                return False  # the queue is not back yet
            await wait_until(lambda: _contains(handled, {again.event_id}), timeout=10, what="again")
            return True

        await wait_until(published_and_handled, timeout=30, interval=0.5, what="resubscribed")


def _resolved() -> Envelope:
    return new_event(
        ConversationResolved(resolved_by="agent-1"),
        tenant_id=TENANT,
        producer="test",
        conversation_id=uuid7_str(),
    )


async def test_first_connect_fails_fast() -> None:
    with pytest.raises(DependencyError):
        await connect("amqp://guest:guest@127.0.0.1:1/", "nobody", timeout=2)


async def test_publish_while_connection_cut_never_loses_silently(
    connection: AbstractRobustConnection, bus_names: BusNames
) -> None:
    received: set[str] = set()
    got_event = asyncio.Event()

    async def handler(env: Envelope) -> None:
        received.add(env.event_id)
        got_event.set()

    proxy = await TcpProxy("127.0.0.1", 5672).start()
    proxied_url = bus_names.amqp_url.replace(":5672", f":{proxy.port}")
    cut_conn = await connect(proxied_url, "test-cut")
    pub = await EventPublisher.create(cut_conn, bus_names.exchange, timeout=3)
    try:
        async with running_consumer(connection, bus_names, handler):
            confirmed: list[str] = []
            failed: list[str] = []

            async def publish(env: Envelope) -> None:
                try:
                    await pub.publish(env)
                    confirmed.append(env.event_id)
                except PublishError:
                    failed.append(env.event_id)

            before = created("before")
            await publish(before)
            proxy.cut()
            during = [created(f"during-{i}") for i in range(20)]
            tasks = [asyncio.create_task(publish(e)) for e in during]
            await wait_until(lambda: _is_down(cut_conn), timeout=10, what="client noticing the cut")
            proxy.heal()
            await asyncio.gather(*tasks)

            # The robust connection comes back and publishing works again.
            async def republish() -> bool:
                after = created("after")
                try:
                    await pub.publish(after)
                except PublishError:
                    return False
                confirmed.append(after.event_id)
                return True

            await wait_until(republish, timeout=20, interval=0.5, what="publish after reconnect")
            await wait_until(
                lambda: _contains(received, set(confirmed)), timeout=15, what="confirmed received"
            )
    finally:
        await pub.close()
        await cut_conn.close()
        await proxy.close()

    assert before.event_id in confirmed
    assert len(confirmed) + len(failed) == len(during) + 2
    # Every event the caller was told is confirmed arrived; the rest raised.
    assert set(confirmed) <= received


async def _is_down(conn: AbstractRobustConnection) -> bool:
    return not conn.connected.is_set()


async def _contains(received: set[str], expected: set[str]) -> bool:
    return expected <= received


async def test_consumer_resumes_after_its_connection_is_cut(
    publisher: EventPublisher, bus_names: BusNames
) -> None:
    handled: asyncio.Queue[str] = asyncio.Queue()

    async def handler(env: Envelope) -> None:
        handled.put_nowait(env.event_id)

    proxy = await TcpProxy("127.0.0.1", 5672).start()
    consumer_conn = await connect(
        bus_names.amqp_url.replace(":5672", f":{proxy.port}"), "test-consumer"
    )
    try:
        async with running_consumer(consumer_conn, bus_names, handler):
            first = created("first")
            await publisher.publish(first)
            assert await asyncio.wait_for(handled.get(), 10) == first.event_id

            proxy.cut()
            await wait_until(lambda: _is_down(consumer_conn), timeout=10, what="cut noticed")
            # Published while the consumer is away: it waits in the durable queue.
            during = created("during")
            await publisher.publish(during)
            proxy.heal()
            # At-least-once: ``first`` may come again if its ack died with the cut.
            after_cut = set()
            while during.event_id not in after_cut:
                after_cut.add(await asyncio.wait_for(handled.get(), 30))
            assert after_cut <= {first.event_id, during.event_id}
    finally:
        await consumer_conn.close()
        await proxy.close()


# Batched acks: every delivery acked exactly once, only when settled, never lost.


def make_consumer(
    connection: AbstractRobustConnection,
    names: BusNames,
    handler: Handler,
    *,
    concurrency: int,
    prefetch: int,
    ack_delay: float = 0.005,
) -> EventConsumer:
    return EventConsumer(
        connection,
        exchange_name=names.exchange,
        topology=QueueTopology(names.queue("acks"), retry_delays_ms=(50, 100)),
        event_types=["conversation.created"],
        handler=handler,
        prefetch=prefetch,
        concurrency=concurrency,
        ack_delay=ack_delay,
    )


@asynccontextmanager
async def consuming(consumer: EventConsumer) -> AsyncIterator[None]:
    """``consumer`` started (queues declared and bound), and stopped on exit."""
    await consumer.start()
    try:
        yield
    finally:
        await consumer.stop()


async def queue_depths(connection: AbstractRobustConnection, consumer: EventConsumer) -> list[int]:
    """Ready messages of the main and retry queues (unacked ones are not counted)."""
    channel = await connection.channel()
    try:
        topo = consumer.topology
        names = [topo.name, *(topo.retry(i) for i in range(len(topo.retry_delays_ms)))]
        depths = []
        for name in names:
            queue = await channel.declare_queue(name, passive=True)
            depths.append(queue.declaration_result.message_count or 0)
        return depths
    finally:
        await channel.close()


async def _has(counter: Counter[str], events: list[Envelope]) -> bool:
    return all(counter[e.event_id] >= 1 for e in events)


async def test_every_delivery_is_acked_exactly_once_and_the_queue_drains(
    connection: AbstractRobustConnection, publisher: EventPublisher, bus_names: BusNames
) -> None:
    handled: Counter[str] = Counter()
    rng = random.Random(7)

    async def handler(env: Envelope) -> None:
        # Finish out of delivery order, as concurrent handlers do.
        for _ in range(rng.randrange(5)):
            await asyncio.sleep(0)
        handled[env.event_id] += 1

    consumer = make_consumer(connection, bus_names, handler, concurrency=8, prefetch=32)
    events = [created(f"inbox-{i}") for i in range(400)]
    async with consuming(consumer):
        for i in range(0, len(events), 100):
            await publisher.publish_many(events[i : i + 100])
        await wait_until(lambda: _has(handled, events), timeout=30, what="all handled")
        await wait_until(
            lambda: _equals(consumer.acks.acked, len(events)), timeout=10, what="all acked"
        )
    # Acked exactly once: an ack of an unknown or already acked tag closes the channel and
    # every unacked delivery comes again; an ack missing leaves it in the queue after stop.
    assert set(handled.values()) == {1}
    assert consumer.acks.acked == len(events)
    assert await queue_depths(connection, consumer) == [0, 0, 0]


async def test_failure_in_the_middle_of_a_batch_is_retried_while_its_neighbours_are_acked(
    connection: AbstractRobustConnection, publisher: EventPublisher, bus_names: BusNames
) -> None:
    events = [created(f"inbox-{i}") for i in range(60)]
    flaky, poison = events[20], events[40]
    attempts: Counter[str] = Counter()
    done: Counter[str] = Counter()

    async def handler(env: Envelope) -> None:
        attempts[env.event_id] += 1
        if env.event_id == poison.event_id:
            raise RuntimeError("poison")
        if env.event_id == flaky.event_id and attempts[env.event_id] == 1:
            raise RuntimeError("flaky once")
        done[env.event_id] += 1

    consumer = make_consumer(connection, bus_names, handler, concurrency=8, prefetch=32)
    async with consuming(consumer):
        await publisher.publish_many(events)
        dead = await get_one(connection, consumer.topology.dead_letter)
        good = [e for e in events if e is not poison]
        await wait_until(lambda: _has(done, good), timeout=30, what="all but poison handled")
        # 59 handled + 3 tries of the poison + 1 failed try of the flaky one, each acked.
        await wait_until(lambda: _equals(consumer.acks.acked, 63), timeout=10, what="acks")

    assert dead.message_id == poison.event_id
    assert dead.headers[REASON_HEADER] == "handler_failed"
    assert attempts[poison.event_id] == 3  # first try + two delayed retries
    assert attempts[flaky.event_id] == 2
    assert set(done.values()) == {1}
    assert all(attempts[e.event_id] == 1 for e in events if e not in (flaky, poison))
    assert await queue_depths(connection, consumer) == [0, 0, 0]


async def test_connection_cut_with_acks_pending_means_redelivery_not_loss(
    publisher: EventPublisher, bus_names: BusNames, connection: AbstractRobustConnection
) -> None:
    events = [created(f"inbox-{i}") for i in range(10)]
    release = asyncio.Event()
    handled: Counter[str] = Counter()
    handled_after_cut: set[str] = set()
    cut = False

    async def handler(env: Envelope) -> None:
        # The first delivery holds the watermark below every other one, so their acks
        # wait (the delay is an hour: nobody acks them singly either).
        if env.event_id == events[0].event_id and handled[env.event_id] == 0:
            await release.wait()
        handled[env.event_id] += 1
        if cut:
            handled_after_cut.add(env.event_id)

    proxy = await TcpProxy("127.0.0.1", 5672).start()
    conn = await connect(bus_names.amqp_url.replace(":5672", f":{proxy.port}"), "test-acks-cut")
    consumer = make_consumer(conn, bus_names, handler, concurrency=16, prefetch=32, ack_delay=3600)
    try:
        async with consuming(consumer):
            await publisher.publish_many(events)
            await wait_until(
                lambda: _has(handled, events[1:]), timeout=20, what="all but the first handled"
            )
            assert consumer.acks.acked == 0  # pending, not sent

            proxy.cut()
            cut = True
            await wait_until(lambda: _is_down(conn), timeout=10, what="cut noticed")
            release.set()  # its ack has no channel left to go to
            proxy.heal()
            await wait_until(
                lambda: _contains(handled_after_cut, {e.event_id for e in events}),
                timeout=40,
                what="all redelivered",
            )
        assert all(handled[e.event_id] >= 2 for e in events[1:])  # before and after the cut
        assert await queue_depths(connection, consumer) == [0, 0, 0]
    finally:
        await conn.close()
        await proxy.close()


async def test_nothing_handled_is_left_unacked_after_stop(
    connection: AbstractRobustConnection, publisher: EventPublisher, bus_names: BusNames
) -> None:
    handled: Counter[str] = Counter()

    async def handler(env: Envelope) -> None:
        handled[env.event_id] += 1

    events = [created(f"inbox-{i}") for i in range(20)]
    consumer = make_consumer(
        connection, bus_names, handler, concurrency=4, prefetch=64, ack_delay=3600
    )
    async with consuming(consumer):
        await publisher.publish_many(events)
        await wait_until(lambda: _has(handled, events), timeout=20, what="all handled")
    assert consumer.acks.acked == len(events)
    assert await queue_depths(connection, consumer) == [0, 0, 0]
    # Nothing comes back to a new consumer of the same queue.
    again: list[str] = []

    async def record(env: Envelope) -> None:
        again.append(env.event_id)

    second = make_consumer(connection, bus_names, record, concurrency=1, prefetch=8)
    async with consuming(second):
        last = created("last")
        await publisher.publish(last)
        await wait_until(lambda: _equals(len(again), 1), timeout=20, what="new event")
    assert again == [last.event_id]


async def _equals(value: int, expected: int) -> bool:
    return value == expected
