"""The outbox relay alone: one round at a time vs rounds overlapping their confirms.

    uv run python services/assignment/bench/relay.py

For each ``rounds_in_flight`` given (1 = one round at a time, the default;
2 = overlapping; default list 1 2 1 2): (1) drain a backlog of 20,000
committed events (rate, CPU per event of this process, which relays and
consumes); (2) commit one event per transaction at a steady ~300/s and
measure commit -> received latency at a consumer (p50/p99). Uses the local PostgreSQL and
RabbitMQ; makes its own database, exchange and queue, and removes them.
Results: docs/benchmarks/assignment.md.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from contextlib import ExitStack
from typing import Any

import aio_pika
import asyncpg

from livedesk.contracts.events.v1.conversation_pb2 import ConversationAssigned
from livedesk.platform.bus import EventPublisher, connect, decode, new_event
from livedesk.platform.bus.outbox import Outbox, OutboxRelay
from livedesk.platform.ids import uuid7_str
from livedesk.platform.logging import configure_logging
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing.servers import find_servers

BACKLOG = 20_000
PACED = 1500


async def run(servers: Any, rounds_in_flight: int) -> dict[str, Any]:
    admin = servers.postgres_url
    name = f"bench_relay_{uuid7_str().replace('-', '')[-10:]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = admin.rsplit("/", 1)[0] + f"/{name}"
    pool = await open_database(dsn, [PLATFORM_MIGRATIONS], max_size=4)
    amqp = await connect(servers.amqp_url, "bench-relay")
    exchange = f"bench.relay.{uuid7_str()[-8:]}"
    ch = await amqp.channel()
    ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    sink = await ch.declare_queue(
        f"{exchange}.sink", durable=True, arguments={"x-queue-type": "quorum"}
    )
    await sink.bind(ex, "#")
    await ch.set_qos(prefetch_count=1000)
    received: dict[str, float] = {}
    target = asyncio.Event()
    want = BACKLOG

    async def on(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        received[decode(msg.body).event_id] = time.perf_counter()
        await msg.ack(multiple=True)
        if len(received) >= want:
            target.set()

    await sink.consume(on, no_ack=False)

    def event() -> Any:
        return new_event(
            ConversationAssigned(agent_id="agent-0001"),
            tenant_id=uuid7_str(),
            producer="bench",
            conversation_id=uuid7_str(),
        )

    backlog = [event() for _ in range(BACKLOG)]
    for i in range(0, BACKLOG, 1000):
        async with pool.acquire() as c, c.transaction():
            await Outbox.add(c, backlog[i : i + 1000], notify=False)

    async def make_publisher() -> EventPublisher:
        return await EventPublisher.create(amqp, exchange)

    relay = OutboxRelay(
        dsn, make_publisher, batch_size=2000, poll_interval=1.0, rounds_in_flight=rounds_in_flight
    )
    cpu, start = time.process_time(), time.perf_counter()
    relay.start()
    await asyncio.wait_for(target.wait(), 300)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    out: dict[str, Any] = {
        "rounds_in_flight": rounds_in_flight,
        "backlog_events_per_s": round(BACKLOG / wall),
        # This process relays and consumes: the consuming half is the same in both modes.
        "process_cpu_us_per_event": round(cpu / BACKLOG * 1e6),
    }

    # Paced: one event per transaction (NOTIFY wakes the relay), as a service commits them.
    target.clear()
    want = BACKLOG + PACED
    committed: dict[str, float] = {}
    for _ in range(PACED):
        env = event()
        async with pool.acquire() as c, c.transaction():
            await Outbox.add(c, [env])
        committed[env.event_id] = time.perf_counter()
        await asyncio.sleep(1 / 300)
    await asyncio.wait_for(target.wait(), 120)
    lat = sorted(received[k] - t for k, t in committed.items())
    out["paced_p50_ms"] = round(statistics.median(lat) * 1000, 1)
    out["paced_p99_ms"] = round(lat[int(len(lat) * 0.99)] * 1000, 1)
    await relay.stop()
    await sink.delete(if_unused=False, if_empty=False)
    await ch.exchange_delete(exchange)
    await amqp.close()
    await pool.close()
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()
    return out


async def main(argv: list[str]) -> None:
    configure_logging("bench", "WARNING", "console")
    modes = [int(a) for a in argv] or [1, 2, 1, 2]
    with ExitStack() as stack:
        servers = find_servers(stack)
        for n in modes:
            print(json.dumps(await run(servers, n)), flush=True)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1:]))
