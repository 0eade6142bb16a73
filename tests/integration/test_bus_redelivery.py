"""A consumer process killed before it acks: the event goes to the next consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.platform.bus import EventPublisher, connect, new_event
from livedesk.platform.ids import uuid7_str
from livedesk.platform.testing import ServiceProcess, free_port, wait_until
from livedesk.platform.testing.pytest_plugin import BusNames

pytestmark = pytest.mark.integration


def _consumer(bus: BusNames, queue: str, out: Path, mode: str, log: Path) -> ServiceProcess:
    env = {
        "AMQP_URL": bus.amqp_url,
        "AMQP_EXCHANGE": bus.exchange,
        "QUEUE": queue,
        "OUT": str(out),
        "MODE": mode,
    }
    return ServiceProcess("livedesk.integration_support.consumer_process", env, log, free_port())


async def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.fixture
async def publisher(bus_names: BusNames) -> AsyncIterator[EventPublisher]:
    connection = await connect(bus_names.amqp_url, "test-publisher")
    pub = await EventPublisher.create(connection, bus_names.exchange, owns_connection=True)
    yield pub
    await pub.close()


async def test_killed_consumer_event_is_redelivered_to_the_next(
    tmp_path: Path, bus_names: BusNames, publisher: EventPublisher
) -> None:
    queue = bus_names.queue("crash")
    first_out, second_out = tmp_path / "first.out", tmp_path / "second.out"
    first = _consumer(bus_names, queue, first_out, "hang", tmp_path / "first.log").start()
    second: ServiceProcess | None = None
    try:
        await wait_until(
            lambda: _has(first, "consuming"), timeout=30, what="first consumer running"
        )
        event = new_event(
            ConversationCreated(inbox_id="crash"),
            tenant_id=uuid7_str(),
            producer="test",
            conversation_id=uuid7_str(),
        )
        await publisher.publish(event)
        # The first consumer holds the event, unacked, inside its handler...
        await wait_until(lambda: _lines(first_out), timeout=15, what="first consumer got it")
        first.kill()  # ...and dies without acking.

        second = _consumer(bus_names, queue, second_out, "ack", tmp_path / "second.log").start()
        got = await wait_until(lambda: _lines(second_out), timeout=30, what="redelivery")
        assert got == [event.event_id]
        assert await _lines(first_out) == [event.event_id]
        assert second.terminate(timeout=10) == 0
    finally:
        first.stop_quietly()
        if second is not None:
            second.stop_quietly()


async def _has(process: ServiceProcess, text: str) -> bool:
    assert process.proc is not None
    if process.proc.poll() is not None:
        raise RuntimeError(f"exited early:\n{process.output()}")
    return text in process.output()
