"""Bus helpers for tests: a private running consumer, reading a queue, raw publishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from livedesk.platform.bus import EventConsumer, Handler, QueueTopology
from livedesk.platform.testing.pytest_plugin import BusNames

__all__ = ["get_one", "publish_raw", "running_consumer"]


@asynccontextmanager
async def running_consumer(
    connection: AbstractRobustConnection,
    names: BusNames,
    handler: Handler,
    *,
    base: str = "q",
    types: Sequence[str] = ("conversation.created",),
    retry_delays_ms: tuple[int, ...] = (50, 100),
) -> AsyncIterator[EventConsumer]:
    """A started consumer on a private queue; stopped on exit."""
    consumer = EventConsumer(
        connection,
        exchange_name=names.exchange,
        topology=QueueTopology(names.queue(base), retry_delays_ms=retry_delays_ms),
        event_types=types,
        handler=handler,
        prefetch=16,
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def get_one(
    connection: AbstractRobustConnection, queue: str, timeout: float = 10.0
) -> AbstractIncomingMessage:
    """The next message of ``queue`` (acked), waiting up to ``timeout`` seconds."""
    channel = await connection.channel()
    try:
        q = await channel.get_queue(queue, ensure=True)
        async with asyncio.timeout(timeout):
            async with q.iterator() as it:
                async for message in it:
                    await message.ack()
                    return message
    finally:
        await channel.close()
    raise AssertionError("unreachable")


async def publish_raw(
    connection: AbstractRobustConnection, exchange: str, routing_key: str, body: bytes
) -> None:
    """Publish ``body`` as it is, bypassing the envelope checks."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        ex = await channel.get_exchange(exchange)
        await ex.publish(aio_pika.Message(body), routing_key=routing_key)
    finally:
        await channel.close()
