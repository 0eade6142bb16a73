"""Client CPU per message of the platform's publisher, and of acking each vs in batches.

    uv run python services/assignment/bench/amqp_acks.py

Evidence for the platform changes recommended in docs/benchmarks/assignment.md:
publishes N events with ``EventPublisher.publish_each`` (the outbox relay's way),
then consumes them acking every message, then again acking every 100th with
``multiple=True``. Uses the local RabbitMQ (AMQP_URL); removes what it declares.
"""

from __future__ import annotations

import asyncio
import os
import time

import aio_pika

from livedesk.contracts.events.v1.conversation_pb2 import ConversationAssigned
from livedesk.platform.bus import EventPublisher, connect, new_event
from livedesk.platform.ids import uuid7_str

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
N = 5000


async def main() -> None:
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
        cpu, wall = await publish()
        print(f"publish_each: {cpu / N * 1e6:.0f} us cpu/msg, {N / wall:.0f} msgs/s")
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
    await publisher.close()
    await queue.delete(if_unused=False, if_empty=False)
    await ch.exchange_delete(exchange)
    await conn.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
