"""The assignment service end to end over the bus: created in, assigned or queued out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractIncomingMessage

from livedesk.assignment_client import AssignmentClient
from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.platform.bus import Envelope, EventPublisher, connect, decode, new_event
from livedesk.platform.ids import uuid7_str
from livedesk.platform.testing import ServiceProcess, free_port
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.testing.servers import Servers

pytestmark = pytest.mark.integration

ONLINE = 1


class Sink:
    """Every event on the test exchange, as it arrives."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Envelope] = asyncio.Queue()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.events.put_nowait(decode(message.body))
        await message.ack()

    async def next_of(self, event_type: str, conversation_id: str, timeout: float = 20) -> Envelope:
        async with asyncio.timeout(timeout):
            while True:
                env = await self.events.get()
                if env.type == event_type and env.conversation_id == conversation_id:
                    return env


@pytest.fixture
async def sink(bus_names: BusNames) -> AsyncIterator[Sink]:
    sink = Sink()
    conn = await aio_pika.connect(bus_names.amqp_url)
    ch = await conn.channel()
    ex = await ch.declare_exchange(bus_names.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    q = await ch.declare_queue(bus_names.queue("sink"), durable=True)
    await q.bind(ex, "#")
    await q.consume(sink.on_message)
    yield sink
    await conn.close()


async def test_created_in_assigned_or_queued_out(
    tmp_path: Path, servers: Servers, bus_names: BusNames, pg_database: str, sink: Sink
) -> None:
    port, grpc_port = free_port(), free_port()
    prefix = f"test:asg:{uuid7_str()[-12:]}:"
    engine = ServiceProcess(
        "livedesk.assignment",
        {
            **bus_names.env(),
            "DATABASE_URL": pg_database,
            "DB_AUTO_CREATE": "false",
            "REDIS_URL": servers.redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "PORT": str(port),
            "GRPC_PORT": str(grpc_port),
            "LIVEDESK_ENV": "test",
        },
        tmp_path / "assignment.log",
        port,
    ).start()
    amqp = await connect(bus_names.amqp_url, "test")
    try:
        await engine.wait_ready()
        publisher = await EventPublisher.create(amqp, bus_names.exchange)
        tenant = uuid7_str()
        async with AssignmentClient(f"127.0.0.1:{grpc_port}") as client:
            await client.upsert_agent_profile(
                pb.AgentProfile(tenant_id=tenant, agent_id="ana", capacity=1, skills=["es"])
            )
            first, second = uuid7_str(), uuid7_str()
            await publisher.publish(
                new_event(
                    ConversationCreated(inbox_id="web", required_skills=["es"]),
                    tenant_id=tenant,
                    producer="chat",
                    conversation_id=first,
                )
            )
            queued = await sink.next_of("conversation.queued", first)
            assert queued.conversation_queued.position == 1

            # The agent comes online: the queued conversation is assigned.
            await client.set_agent_status(tenant, "ana", ONLINE)
            assigned = await sink.next_of("conversation.assigned", first)
            assert assigned.conversation_assigned.agent_id == "ana"

            # A redelivered "created" does not assign twice; a new one waits (ana is full).
            await publisher.publish(
                new_event(
                    ConversationCreated(inbox_id="web"),
                    tenant_id=tenant,
                    producer="chat",
                    conversation_id=second,
                )
            )
            again = await sink.next_of("conversation.queued", second)
            assert again.conversation_queued.position == 1
        await publisher.close()
        assert engine.terminate(timeout=15) == 0, engine.output()[-3000:]
    finally:
        engine.stop_quietly()
        await amqp.close()
        r = aioredis.Redis.from_url(servers.redis_url)
        keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
        if keys:
            await r.unlink(*keys)
        await r.aclose()
