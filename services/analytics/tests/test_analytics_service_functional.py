"""The analytics process for real: RabbitMQ in, chDB out, SIGTERM out cleanly."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from livedesk.analytics.store import Store
from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.contracts.events.v1.message_pb2 import MessageCreated
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
