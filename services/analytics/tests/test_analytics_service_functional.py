"""The analytics process for real: RabbitMQ in, chDB out, SIGTERM out cleanly."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import aio_pika
import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from livedesk.analytics.store import Store
from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.contracts.events.v1.message_pb2 import MessageCreated
from livedesk.platform.auth import AuthSettings, load_issuer
from livedesk.platform.bus import EventPublisher, connect, new_event
from livedesk.platform.testing import ServiceProcess, free_port, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from livedesk.platform.testing.pytest_plugin import BusNames

pytestmark = pytest.mark.integration


@pytest.fixture
def analytics(tmp_path: Path, bus_names: BusNames) -> Iterator[ServiceProcess]:
    env = {
        **bus_names.env(),
        "PORT": str(free_port()),
        "CHDB_PATH": str(tmp_path / "chdb"),
        "INGEST_BATCH_SIZE": "8",
        "INGEST_FLUSH_INTERVAL": "0.05",
        "AMQP_RETRY_DELAYS_MS": "[100]",
    }
    process = ServiceProcess(
        "livedesk.analytics", env, tmp_path / "analytics.log", int(env["PORT"])
    )
    try:
        yield process
    finally:
        process.stop_quietly()


async def _ingested(base_url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "livedesk_analytics_events_ingested"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def test_every_event_lands_once_and_sigterm_exits_zero(
    analytics: ServiceProcess, bus_names: BusNames, tmp_path: Path
) -> None:
    analytics.start()
    await analytics.wait_ready()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{analytics.base_url}/readyz") as resp,
    ):
        body = await resp.json()
    assert body["checks"] == {
        "clickhouse": {"ok": True, "detail": "ok"},
        "rabbitmq": {"ok": True, "detail": "ok"},
        "warm-up": {"ok": True, "detail": "ok"},
    }

    at = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    events = [
        new_event(
            MessageCreated(message_id=f"m{i}", seq=i, body=f"hello {i}"),
            tenant_id="tenant-1",
            producer="chat",
            conversation_id="conv-1",
            occurred_at=at,
        )
        for i in range(20)
    ]
    events.append(
        new_event(ConversationCreated(inbox_id="inbox-1"), tenant_id="tenant-1", producer="chat")
    )
    connection = await connect(bus_names.amqp_url, "analytics-test")
    try:
        publisher = await EventPublisher.create(connection, bus_names.exchange)
        await publisher.publish_many(events)
        await publisher.publish_many(events[:5])  # redeliveries of the same events
        await publisher.close()
    finally:
        await connection.close()

    async def all_ingested() -> bool:
        return await _ingested(analytics.base_url) >= len(events) + 5

    await wait_until(all_ingested, timeout=30, what="26 rows ingested")

    assert await asyncio.to_thread(analytics.terminate) == 0  # SIGTERM, then the exit code
    log = analytics.output()
    assert "analytics_draining" in log
    assert "store_closed" in log

    # The process is gone, so this process may open its chDB directory.
    store = await Store.open(clickhouse_url=None, chdb_path=str(tmp_path / "chdb"))
    try:
        rows = await store.query(
            "SELECT type, count() FROM events FINAL GROUP BY type ORDER BY type"
        )
    finally:
        await store.close()
    assert rows == [("conversation.created", 1), ("message.created", 20)]


async def test_a_second_process_on_the_same_chdb_directory_exits_3(
    analytics: ServiceProcess, tmp_path: Path
) -> None:
    analytics.start()
    await analytics.wait_ready()
    second = ServiceProcess(
        "livedesk.analytics",
        {**analytics.env, "PORT": str(free_port())},
        tmp_path / "second.log",
        0,
    ).start()
    assert second.proc is not None
    assert await asyncio.to_thread(second.proc.wait, 60) == 3
    second.stop_quietly()
    assert "another process" in second.output()
    assert await asyncio.to_thread(analytics.terminate) == 0


async def _metric(base_url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def _overview_created(base_url: str) -> int:
    signed = load_issuer(AuthSettings(livedesk_env="test")).issue(
        subject="admin-1",
        tenant_id="tenant-1",
        role="admin",
        token_type="access",
        ttl=dt.timedelta(minutes=5),
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{base_url}/api/v1/reports/overview",
            params={"from": "2024-05-06T00:00:00Z", "to": "2024-05-07T00:00:00Z"},
            headers={"Authorization": f"Bearer {signed}"},
        ) as resp,
    ):
        body = await resp.json()
    return int(body["conversations_created"])


async def test_crashes_and_stops_lose_nothing_and_count_nothing_twice(
    tmp_path: Path, bus_names: BusNames
) -> None:
    env = {
        **bus_names.env(),
        "PORT": str(free_port()),
        "CHDB_PATH": str(tmp_path / "chdb"),
        "INGEST_BATCH_SIZE": "500",
        "INGEST_FLUSH_INTERVAL": "0.05",
        "LAG_POLL_INTERVAL": "0.2",
    }

    def process(n: int) -> ServiceProcess:
        return ServiceProcess("livedesk.analytics", env, tmp_path / f"a{n}.log", int(env["PORT"]))

    first = process(1).start()
    try:
        await first.wait_ready()  # declares and binds the queue
    finally:
        first.kill()  # a crash, not a clean stop

    at = dt.datetime(2024, 5, 6, 9, tzinfo=dt.UTC)
    conversations = 1000
    events = []
    for i in range(conversations):
        events.append(
            new_event(
                ConversationCreated(inbox_id="web"),
                tenant_id="tenant-1",
                producer="chat",
                conversation_id=f"c{i}",
                occurred_at=at + dt.timedelta(seconds=i),
            )
        )
        for seq in (1, 2):
            events.append(
                new_event(
                    MessageCreated(message_id=f"m{i}-{seq}", seq=seq, body=f"hello {i}"),
                    tenant_id="tenant-1",
                    producer="chat",
                    conversation_id=f"c{i}",
                    occurred_at=at + dt.timedelta(seconds=i, milliseconds=seq),
                )
            )
    connection = await connect(bus_names.amqp_url, "analytics-test")
    try:
        publisher = await EventPublisher.create(connection, bus_names.exchange)
        await publisher.publish_many(events)  # analytics is down: the queue holds them
        await publisher.publish_many(events[::10])  # and redeliveries
        await publisher.close()
    finally:
        await connection.close()

    second = process(2).start()
    try:
        await second.wait_ready()

        async def some_ingested() -> bool:
            return await _metric(second.base_url, "livedesk_analytics_events_ingested_total") > 0

        await wait_until(some_ingested, timeout=30, what="ingestion started")
    finally:
        second.kill()  # crash again, mid-catch-up

    third = process(3).start()
    try:
        await third.wait_ready()

        idle_polls = 0

        async def caught_up() -> bool:
            # Every conversation reported, nothing waiting in RabbitMQ nor in hand,
            # over several polls of the queue depth (LAG_POLL_INTERVAL = 0.2 s).
            nonlocal idle_polls
            depth = await _metric(third.base_url, "livedesk_analytics_queue_messages")
            in_flight = await _metric(third.base_url, "livedesk_analytics_events_in_flight")
            created = await _overview_created(third.base_url)
            idle = depth == 0 and in_flight == 0 and created == conversations
            idle_polls = idle_polls + 1 if idle else 0
            return idle_polls >= 4

        await wait_until(caught_up, timeout=60, interval=0.2, what="queue drained")
        assert await asyncio.to_thread(third.terminate) == 0
    finally:
        third.stop_quietly()

    store = await Store.open(clickhouse_url=None, chdb_path=str(tmp_path / "chdb"))
    try:
        rows = await store.query(
            "SELECT type, count() FROM events FINAL GROUP BY type ORDER BY type"
        )
        messages = await store.query("SELECT count() FROM messages FINAL")
        created = await store.query(
            "SELECT count() FROM conversation_events FINAL WHERE type = 'conversation.created'"
        )
    finally:
        await store.close()
    assert rows == [("conversation.created", conversations), ("message.created", 2 * conversations)]
    assert messages == [(2 * conversations,)]
    assert created == [(conversations,)]


async def test_undecodable_events_go_to_the_dead_letter_queue(
    analytics: ServiceProcess, bus_names: BusNames
) -> None:
    analytics.start()
    await analytics.wait_ready()
    connection = await aio_pika.connect(bus_names.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(bus_names.exchange)
        await exchange.publish(
            aio_pika.Message(b"\x00 not a protobuf envelope"), routing_key="message.created"
        )

        async def dead_lettered() -> bool:
            raw = await channel.get_underlay_channel()
            declared = await raw.queue_declare(f"{bus_names.queue('analytics')}.dlq", passive=True)
            return declared.message_count == 1

        await wait_until(dead_lettered, timeout=30, what="the DLQ holds the poison event")
    finally:
        await connection.close()
    assert await asyncio.to_thread(analytics.terminate) == 0
