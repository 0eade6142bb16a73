"""Client CPU per message of the platform's publisher, and of acking each vs in batches.

    uv run python services/assignment/bench/amqp_acks.py

Evidence for the platform changes recommended in docs/benchmarks/assignment.md:
publishes N events with ``EventPublisher.publish_each`` (the outbox relay's way;
client CPU and the broker's CPU per message),
then consumes them acking every message, then again acking every 100th with
``multiple=True``; then through the platform's ``EventConsumer`` (whatever
version is imported: ``PYTHONPATH=<copy of libs/platform/src>`` measures
another) with a handler that does nothing, at concurrency 1 (prefetch 64) and
256 (prefetch 256, the assignment service's). Uses the local RabbitMQ
(AMQP_URL); removes what it declares.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import aio_pika

# This directory is on sys.path when run as a script (mypy does not know it).
from bench import _servers_cpu  # type: ignore[import-not-found]

from livedesk.contracts.events.v1.conversation_pb2 import ConversationAssigned
from livedesk.platform.bus import (
    Envelope,
    EventConsumer,
    EventPublisher,
    QueueTopology,
    connect,
    new_event,
)
from livedesk.platform.ids import uuid7_str
from livedesk.platform.logging import configure_logging

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
N = 5000


async def main() -> None:
    configure_logging("bench", "WARNING", "console")  # no per-event debug lines in the measure
    conn = await connect(URL, "bench-acks")
    exchange = f"bench.acks.{uuid7_str()[-8:]}"
    ch = await conn.channel()
    ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await ch.declare_queue(
        f"{exchange}.q", durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(ex, "#")
    envs = [
        new_event(
            ConversationAssigned(agent_id="agent-0001"),
            tenant_id=uuid7_str(),
            producer="bench",
            conversation_id=uuid7_str(),
        )
        for _ in range(N)
    ]
    publisher = await EventPublisher.create(conn, exchange)

    async def publish() -> tuple[float, float]:
        cpu, start = time.process_time(), time.perf_counter()
        for i in range(0, N, 500):
            await publisher.publish_each(envs[i : i + 500])
        return time.process_time() - cpu, time.perf_counter() - start

    for mode in ("each", "multiple"):
        broker = _servers_cpu()["rabbitmq"]
        cpu, wall = await publish()
        broker = _servers_cpu()["rabbitmq"] - broker
        print(
            f"publish_each: {cpu / N * 1e6:.0f} us cpu/msg, {N / wall:.0f} msgs/s, "
            f"rabbitmq {broker / N * 1e6:.0f} us cpu/msg"
        )
        cch = await conn.channel()
        await cch.set_qos(prefetch_count=256)
        cq = await cch.get_queue(queue.name)
        got = 0
        done = asyncio.Event()

        async def on(
            msg: aio_pika.abc.AbstractIncomingMessage, mode: str = mode, done: asyncio.Event = done
        ) -> None:
            nonlocal got
            got += 1
            if mode == "each":
                await msg.ack()
            elif got % 100 == 0 or got == N:
                await msg.ack(multiple=True)
            if got == N:
                done.set()

        cpu, start = time.process_time(), time.perf_counter()
        tag = await cq.consume(on)
        await done.wait()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - start
        print(f"consume, ack {mode}: {cpu / N * 1e6:.0f} us cpu/msg, {N / wall:.0f} msgs/s")
        await cq.cancel(tag)
        await cch.close()
    for concurrency, prefetch in ((1, 64), (256, 256)):
        await platform_consumer(conn, exchange, publish, concurrency, prefetch)
    await publisher.close()
    await queue.delete(if_unused=False, if_empty=False)
    for name in (f"{exchange}.c", f"{exchange}.c.dlq"):
        await ch.queue_delete(name)
    await ch.exchange_delete(exchange)
    await conn.close()


async def platform_consumer(
    conn: aio_pika.abc.AbstractRobustConnection,
    exchange: str,
    publish: Callable[[], Awaitable[tuple[float, float]]],
    concurrency: int,
    prefetch: int,
) -> None:
    """Client CPU per message consumed by EventConsumer (queued first, then drained)."""
    got = 0
    done = asyncio.Event()

    async def handler(env: Envelope) -> None:
        nonlocal got
        got += 1
        if got == N:
            done.set()

    def consumer() -> EventConsumer:
        return EventConsumer(
            conn,
            exchange_name=exchange,
            topology=QueueTopology(f"{exchange}.c", retry_delays_ms=()),
            event_types=["conversation.*"],
            handler=handler,
            prefetch=prefetch,
            concurrency=concurrency,
        )

    declare = consumer()  # declares and binds the queue, so the events wait in it
    await declare.start()
    await declare.stop()
    await publish()
    await asyncio.sleep(1)  # the queue's own work on the new messages, outside the measure
    cpu, start = time.process_time(), time.perf_counter()
    c = consumer()
    await c.start()
    await done.wait()
    await c.stop()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - start
    acks = getattr(c, "acks", None)  # absent in versions that ack each delivery
    print(
        f"EventConsumer concurrency {concurrency} prefetch {prefetch}: "
        f"{cpu / N * 1e6:.0f} us cpu/msg, {N / wall:.0f} msgs/s, "
        f"{acks.frames if acks else N} ack frames"
    )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
