"""Analytics benchmark: ingest rate next to a raw consumer's, and report latency at scale.

1. Ingest: BENCH_INGEST_EVENTS events are published once to an exchange that
   feeds two identical quorum queues: analytics' own (analytics stopped) and a
   raw one. One plain aio-pika consumer drains the raw queue and only acks
   (the ceiling of one Python consumer here); then analytics starts and drains
   its queue into chDB (decode, rows, INSERT, summaries, ack). Both rates are
   printed, with their ratio.
2. Reports: BENCH_CONVERSATIONS conversations with BENCH_MESSAGES_PER_CONVERSATION
   messages each (plus created, assigned, resolved and a rating) are generated
   inside chDB as `events` rows (the materialized views fill the report tables
   and states as ingestion does), the summaries are computed as migration 0004
   does and every day is pre-aggregated as the service's refresher does
   (daily.py), then the service answers every report and search request
   BENCH_REQUESTS times in a row, BENCH_ROUNDS rounds; p50 / p95 / p99 per round.
   Besides whole UTC days, the overview and tables are asked for 30 days up
   to a mid-hour instant (the API's "up to now") and from a UTC-4 midnight.
   Then business hours are set on 2 of 5 inboxes: the reports right after
   (days still pre-aggregated, those inboxes' business seconds written again
   by the change, the refresher re-computing a few days per round), and again
   two refresh rounds later. Last, the reports up to "now" while
   BENCH_LIVE_EVENTS_PER_SECOND events (default 20: conversations of 7 events)
   arrive through RabbitMQ for the hour of "now", as in a live desk: that hour
   keeps changing, and ingestion and the refresher write meanwhile.
   BENCH_REPORTS_DATA=<dir> copies a chDB directory an earlier load wrote
   (same sizes) instead of generating the history again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from livedesk.analytics.daily import refresh
from livedesk.analytics.schema import migrate
from livedesk.analytics.store import Store
from livedesk.analytics.summary import refresh_all
from livedesk.contracts.events.v1.common_pb2 import ActorKind
from livedesk.contracts.events.v1.conversation_pb2 import (
    ConversationAssigned,
    ConversationCreated,
    ConversationResolved,
)
from livedesk.contracts.events.v1.message_pb2 import MessageCreated
from livedesk.platform.auth import AuthSettings, load_issuer
from livedesk.platform.bus import EventPublisher, connect, new_event
from livedesk.platform.testing import ServiceProcess, free_port, wait_until
from livedesk.platform.testing.pytest_plugin import BusNames, delete_bus

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
    from google.protobuf.message import Message

    from livedesk.platform.bus import Envelope

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
INGEST_EVENTS = int(os.environ.get("BENCH_INGEST_EVENTS", "200000"))
CONVERSATIONS = int(os.environ.get("BENCH_CONVERSATIONS", "1000000"))
MESSAGES_PER_CONVERSATION = int(os.environ.get("BENCH_MESSAGES_PER_CONVERSATION", "10"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "50"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
LOADED = os.environ.get("BENCH_REPORTS_DATA", "")
"""A chDB directory written by an earlier load (same sizes), copied instead of generating."""
PARTS = os.environ.get("BENCH_PARTS", "ingest,reports").split(",")
TENANT = "bench-tenant"
START = dt.datetime(2024, 4, 1, tzinfo=dt.UTC)
LIVE_RATE = float(os.environ.get("BENCH_LIVE_EVENTS_PER_SECOND", "20"))
"""Events per second published into the hour of the reports' "now" while they are asked."""
PREFETCH = 10_000
"""The raw consumer's prefetch: analytics' own (2 x INGEST_BATCH_SIZE)."""


async def _metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def _service(tmp: Path, tag: str, chdb: Path) -> ServiceProcess:
    env = {
        "AMQP_URL": AMQP_URL,
        "AMQP_EXCHANGE": f"bench.{tag}.events",
        "AMQP_QUEUE_PREFIX": f"bench.{tag}.",
        "PORT": str(free_port()),
        "CHDB_PATH": str(chdb),
        "LOG_LEVEL": "WARNING",
        "LAG_POLL_INTERVAL": "0.5",
    }
    return ServiceProcess("livedesk.analytics", env, tmp / f"{tag}.log", int(env["PORT"]))


def _ingest_events() -> list[Envelope]:
    events = []
    for i in range(INGEST_EVENTS):
        conv = f"c{i // 10}"
        if i % 10 == 0:
            payload: Message = ConversationCreated(inbox_id="web")
        else:
            payload = MessageCreated(message_id=f"m{i}", seq=i % 10, body=f"hello world {i}")
            payload.created_at.FromDatetime(START + dt.timedelta(milliseconds=i))
        events.append(
            new_event(
                payload,
                tenant_id=TENANT,
                producer="bench",
                conversation_id=conv,
                occurred_at=START + dt.timedelta(milliseconds=i),
            )
        )
    return events


async def _raw_drain(connection: AbstractRobustConnection, queue_name: str, total: int) -> float:
    """Seconds one plain aio-pika consumer takes to drain ``total`` messages, acking each."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.get_queue(queue_name)
    done = asyncio.Event()
    seen = 0
    first = 0.0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal seen, first
        if seen == 0:
            first = time.perf_counter()
        seen += 1
        await message.ack()
        if seen >= total:
            done.set()

    started = time.perf_counter()
    tag = await queue.consume(on_message)
    await asyncio.wait_for(done.wait(), 1800)
    elapsed = time.perf_counter() - started
    await queue.cancel(tag)
    await channel.close()
    print(f"  (raw: first delivery after {first - started:.2f}s)")
    return elapsed


async def bench_ingest(tmp: Path) -> None:
    tag = f"i{os.getpid()}"
    exchange_name = f"bench.{tag}.events"
    service = _service(tmp, tag, tmp / "ingest-chdb")
    # Once, to migrate chDB and declare analytics' queue and bindings; then stopped.
    service.start()
    await service.wait_ready(120)
    service.terminate()
    connection = await connect(AMQP_URL, "bench")
    channel = await connection.channel()
    exchange = await channel.get_exchange(exchange_name)
    raw_queue = f"bench.{tag}.raw"
    queue = await channel.declare_queue(
        raw_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(exchange, routing_key="#")

    events = _ingest_events()
    publisher = await EventPublisher.create(connection, exchange_name)
    t0 = time.perf_counter()
    for i in range(0, len(events), 2000):
        await publisher.publish_many(events[i : i + 2000])
    published = time.perf_counter() - t0
    print(
        f"published {len(events):,} events to 2 quorum queues in {published:.1f}s "
        f"({len(events) / published:,.0f} events/s, analytics stopped)"
    )
    await publisher.close()

    raw = await _raw_drain(connection, raw_queue, len(events))
    raw_rate = len(events) / raw
    print(f"raw: one aio-pika consumer, ack only: {raw:.1f}s = {raw_rate:,.0f} messages/s")

    service.start()
    started = time.perf_counter()
    samples: list[tuple[float, float]] = []

    async def drained() -> bool:
        try:
            count = await _metric(service.base_url, "livedesk_analytics_events_ingested_total")
        except aiohttp.ClientError:
            return False
        samples.append((time.perf_counter(), count))
        return count >= len(events)

    await wait_until(drained, timeout=1800, interval=0.2, what="backlog ingested")
    elapsed = time.perf_counter() - started
    # Sustained: from the first sample with events stored to the last (start-up excluded).
    first = next((t, c) for t, c in samples if c > 0)
    sustained = (samples[-1][1] - first[1]) / max(1e-9, samples[-1][0] - first[0])
    print(
        f"ingest: {len(events):,} events into chDB in {elapsed:.1f}s incl. start-up "
        f"({len(events) / elapsed:,.0f} events/s); sustained {sustained:,.0f} events/s "
        f"= {sustained / raw_rate:.0%} of raw"
    )
    service.terminate()
    for q in (
        "raw",
        "analytics",
        "analytics.dlq",
        "analytics.retry.0",
        "analytics.retry.1",
        "analytics.retry.2",
    ):
        await channel.queue_delete(f"bench.{tag}.{q}")
    await channel.exchange_delete(exchange_name)
    await connection.close()


_GENERATE = """
INSERT INTO events (event_id, type, tenant_id, conversation_id, producer, occurred_at, trace_id,
                    payload, ingested_at)
SELECT generateUUIDv7(), type, '{tenant}', conv, 'bench', at, '', payload, now64(3)
FROM (
    SELECT
        number AS n,
        intDiv(n, {per}) AS c,
        n % {per} AS k,
        concat('c', toString(c)) AS conv,
        toDateTime64('{start}', 3, 'UTC') + toIntervalMillisecond(c * {spacing_ms}) AS t0,
        multiIf(k = 0, 'conversation.created', k = 1, 'conversation.assigned',
                k = {per} - 2, 'conversation.resolved', k = {per} - 1, 'csat.submitted',
                'message.created') AS type,
        t0 + toIntervalSecond(k * 30 + (c % 7) * 5) AS at,
        concat('ag', toString(c % 40)) AS agent,
        multiIf(
            k = 0, concat('{{"inbox_id":"inbox', toString(c % 5),
                          '","team_id":"team', toString(c % 3), '"}}'),
            k = 1, concat('{{"agent_id":"', agent, '"}}'),
            k = {per} - 2, concat('{{"agent_id":"', agent, '","resolved_by":"', agent, '"}}'),
            k = {per} - 1,
            concat('{{"rating":', toString(1 + c % 5), ',"agent_id":"', agent, '"}}'),
            concat('{{"message_id":"', conv, '-', toString(k), '","seq":"', toString(k - 1),
                   '","sender_kind":"', if(k % 2 = 0, 'ACTOR_KIND_VISITOR', 'ACTOR_KIND_AGENT'),
                   '","sender_id":"', if(k % 2 = 0, concat('v', toString(c)), agent),
                   '","body":"', arrayElement(['my order has not arrived', 'where is my parcel',
                   'refund the invoice please', 'the shipping label is wrong',
                   'thanks for your help', 'can you check the tracking number',
                   'password reset does not work', 'billing address changed'], 1 + (n % 8)),
                   ' ', toString(n % 1000), '","created_at":"',
                   formatDateTime(at, '%Y-%m-%dT%H:%i:%SZ', 'UTC'), '"}}')) AS payload
    FROM numbers({rows})
)
"""


async def load_reports_data(chdb: Path) -> None:
    per = MESSAGES_PER_CONVERSATION + 4
    rows = CONVERSATIONS * per
    spacing_ms = max(1, (60 * 86400 * 1000) // CONVERSATIONS)  # spread over 60 days
    store = await Store.open(clickhouse_url=None, chdb_path=str(chdb))
    try:
        await migrate(store)
        t0 = time.perf_counter()
        chunk = per * 200_000
        for offset in range(0, rows, chunk):
            sql = _GENERATE.format(
                tenant=TENANT,
                start=START.strftime("%Y-%m-%d %H:%M:%S"),
                spacing_ms=spacing_ms,
                per=per,
                rows=f"{offset}, {min(chunk, rows - offset)}",
            )
            await store.command(sql)
        loaded = time.perf_counter() - t0
        t0 = time.perf_counter()
        await refresh_all(store)
        summarized = time.perf_counter() - t0
        # What the service's refresher would do at start: pre-aggregate every day.
        t0 = time.perf_counter()
        days = await refresh(store)
        aggregated = time.perf_counter() - t0
        counted = await store.query("SELECT count() FROM messages")
        summaries = await store.query("SELECT count() FROM conversation_summary")
        print(
            f"loaded {CONVERSATIONS:,} conversations, {counted[0][0]:,} messages "
            f"({rows:,} events) in {loaded:.0f}s; {summaries[0][0]:,} summaries "
            f"computed in {summarized:.0f}s; {days} days pre-aggregated in {aggregated:.0f}s"
        )
    finally:
        await store.close()


async def _latency(
    session: aiohttp.ClientSession, url: str, params: dict[str, str], headers: dict[str, str]
) -> list[float]:
    timings = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        async with session.get(url, params=params, headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, await resp.text()
        timings.append((time.perf_counter() - t0) * 1000)
    return timings


def _summary(name: str, timings: list[float]) -> None:
    timings.sort()

    def pct(p: float) -> float:
        return timings[min(len(timings) - 1, int(len(timings) * p))]

    print(
        f"  {name}: p50 {statistics.median(timings):.0f} ms, p95 {pct(0.95):.0f} ms, "
        f"p99 {pct(0.99):.0f} ms (n={len(timings)})"
    )


_MONTH = {"from": "2024-04-15T00:00:00Z", "to": "2024-05-15T00:00:00Z"}
# What dashboards ask: the last 30 days up to "now" (a mid-hour instant), and
# 30 days from a UTC-4 tenant's local midnight.
_TO_NOW = {"from": "2024-04-15T10:17:23Z", "to": "2024-05-15T10:17:23Z"}
_UTC_MINUS_4 = {"from": "2024-04-15T04:00:00Z", "to": "2024-05-15T04:00:00Z"}
_REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("overview, 30 days", "reports/overview", _MONTH),
    ("overview, 30 days, inbox filter", "reports/overview", {**_MONTH, "inbox_id": "inbox1"}),
    ("overview, 30 days, agent filter", "reports/overview", {**_MONTH, "agent_id": "ag7"}),
    ("agents table, 30 days", "reports/agents", _MONTH),
    ("inboxes table, 30 days", "reports/inboxes", _MONTH),
    ("teams table, 30 days", "reports/teams", _MONTH),
    ("volume by day, 30 days", "reports/volume", {**_MONTH, "interval": "day"}),
    (
        "volume by hour, 7 days",
        "reports/volume",
        {"from": "2024-05-01T00:00:00Z", "to": "2024-05-08T00:00:00Z", "interval": "hour"},
    ),
    ("heatmap, 30 days", "reports/heatmap", _MONTH),
    ("overview, 30 days to 10:17:23", "reports/overview", _TO_NOW),
    ("agents table, 30 days to 10:17:23", "reports/agents", _TO_NOW),
    ("inboxes table, 30 days to 10:17:23", "reports/inboxes", _TO_NOW),
    ("volume by day, 30 days to 10:17:23", "reports/volume", {**_TO_NOW, "interval": "day"}),
    ("overview, 30 days from UTC-4 midnight", "reports/overview", _UTC_MINUS_4),
    ("agents table, 30 days from UTC-4 midnight", "reports/agents", _UTC_MINUS_4),
    ("inboxes table, 30 days from UTC-4 midnight", "reports/inboxes", _UTC_MINUS_4),
    ("live", "reports/live", {}),
    ("search 'parcel' (newest 20)", "search/messages", {"q": "parcel"}),
    ("search '\"tracking number\" 123'", "search/messages", {"q": '"tracking number" 123'}),
    (
        "search 'refund 777' in April",
        "search/messages",
        {"q": "refund 777", "from": "2024-04-01T00:00:00Z", "to": "2024-05-01T00:00:00Z"},
    ),
]
_BUSINESS_HOURS = {
    "time_zone": "Europe/Paris",
    "windows": [{"weekday": d, "start": "09:00", "end": "17:00"} for d in range(1, 6)],
}


async def _refreshed(base: str) -> None:
    """Wait until a refresh round started after now found and left no dirty day."""
    rounds = "livedesk_analytics_report_refresh_seconds_count"
    t0 = time.perf_counter()
    first = await _metric(base, rounds)

    async def done() -> bool:
        return (
            await _metric(base, rounds) >= first + 2
            and await _metric(base, "livedesk_analytics_report_days_stale") == 0
        )

    await wait_until(done, timeout=600, interval=0.5, what="report days refreshed")
    print(f"  (two refresh rounds, no dirty day, {time.perf_counter() - t0:.0f}s after the change)")


_NOW = dt.datetime(2024, 5, 15, 10, 17, 23, tzinfo=dt.UTC)


def _live_conversation(i: int) -> list[Envelope]:
    """A conversation of 7 events inside the hour of the reports' "now", before it."""
    conv = f"live{os.getpid()}-{i}"
    agent = f"ag{i % 40}"
    t0 = _NOW.replace(minute=0, second=0) + dt.timedelta(seconds=i % 900)
    payloads: list[Message] = [
        ConversationCreated(inbox_id=f"inbox{i % 5}", team_id=f"team{i % 3}"),
        ConversationAssigned(agent_id=agent),
    ]
    for k in range(4):
        visitor = k % 2 == 0
        payloads.append(
            MessageCreated(
                message_id=f"{conv}-{k}",
                seq=k + 1,
                sender_kind=ActorKind.ACTOR_KIND_VISITOR if visitor else ActorKind.ACTOR_KIND_AGENT,
                sender_id=f"v{i}" if visitor else agent,
                body="where is my parcel" if visitor else "it ships today",
            )
        )
    payloads.append(ConversationResolved(resolved_by=agent, agent_id=agent))
    events = []
    for k, payload in enumerate(payloads):
        at = t0 + dt.timedelta(seconds=20 * k)
        if isinstance(payload, MessageCreated):
            payload.created_at.FromDatetime(at)
        events.append(
            new_event(
                payload, tenant_id=TENANT, producer="bench", conversation_id=conv, occurred_at=at
            )
        )
    return events


async def _live_traffic(exchange: str, stop: asyncio.Event) -> int:
    """Publish LIVE_RATE events/s into the current hour until ``stop``; the events sent."""
    connection = await connect(AMQP_URL, "bench-live")
    publisher = await EventPublisher.create(connection, exchange)
    sent, i = 0, 0
    started = time.perf_counter()
    try:
        while not stop.is_set():
            due = int((time.perf_counter() - started) * LIVE_RATE)
            while sent < due:
                events = _live_conversation(i)
                i += 1
                await publisher.publish_many(events)
                sent += len(events)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 7 / LIVE_RATE)
    finally:
        await publisher.close()
        await connection.close()
    return sent


async def _with_live_traffic(
    s: aiohttp.ClientSession, base: str, exchange: str, headers: dict[str, str]
) -> None:
    """The reports up to "now" while events keep arriving for the current hour."""
    ingested = "livedesk_analytics_events_ingested_total"
    before = await _metric(base, ingested)
    stop = asyncio.Event()
    traffic = asyncio.create_task(_live_traffic(exchange, stop))
    try:

        async def flowing() -> bool:
            return await _metric(base, ingested) >= before + 2 * LIVE_RATE

        await wait_until(flowing, timeout=120, interval=0.2, what="live events ingested")
        print(f"while {LIVE_RATE:g} events/s arrive for the hour of 10:17:23:")
        for name, path, params in _REQUESTS[9:13] + _REQUESTS[:2]:
            _summary(name, await _latency(s, f"{base}/api/v1/{path}", params, headers))
    finally:
        stop.set()
        sent = await traffic
    done = await _metric(base, ingested) - before
    print(f"  ({sent} live events published, {done:.0f} ingested meanwhile)")


async def bench_reports(tmp: Path) -> None:
    chdb = tmp / "reports-chdb"
    if LOADED:
        shutil.copytree(LOADED, chdb, symlinks=True)  # a data set load_reports_data wrote before
    else:
        await load_reports_data(chdb)
    tag = f"r{os.getpid()}"
    service = _service(tmp, tag, chdb)
    service.start()
    try:
        await service.wait_ready(300)
        token = load_issuer(AuthSettings(livedesk_env="test")).issue(
            subject="bench",
            tenant_id=TENANT,
            role="admin",
            token_type="access",
            ttl=dt.timedelta(hours=1),
        )
        headers = {"Authorization": f"Bearer {token}"}
        api = f"{service.base_url}/api/v1"
        async with aiohttp.ClientSession() as s:
            for round_ in range(1, ROUNDS + 1):
                print(f"round {round_}:")
                for name, path, params in _REQUESTS:
                    _summary(name, await _latency(s, f"{api}/{path}", params, headers))
            # Business hours on two of the five inboxes: the per-item calendar arithmetic.
            for inbox in ("inbox1", "inbox2"):
                t0 = time.perf_counter()
                async with s.put(
                    f"{api}/reports/settings/business-hours/{inbox}",
                    json=_BUSINESS_HOURS,
                    headers=headers,
                ) as resp:
                    assert resp.status == 200, await resp.text()
                took = (time.perf_counter() - t0) * 1000
                print(f"  PUT business hours of {inbox}: {took:.0f} ms")
            print("with business hours on 2 of 5 inboxes, right after the change:")
            for name, path, params in _REQUESTS[:6] + _REQUESTS[9:12]:
                _summary(name, await _latency(s, f"{api}/{path}", params, headers))
            await _refreshed(service.base_url)
            print("with business hours on 2 of 5 inboxes, two refresh rounds later:")
            for name, path, params in _REQUESTS[:6]:
                _summary(name, await _latency(s, f"{api}/{path}", params, headers))
            await _with_live_traffic(s, service.base_url, f"bench.{tag}.events", headers)
    finally:
        service.terminate()
        # The service declared its queues and exchange on the shared broker: remove them.
        await delete_bus(BusNames(AMQP_URL, f"bench.{tag}.events", f"bench.{tag}.", ["analytics"]))


async def main() -> None:
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as tmp:
        if "ingest" in PARTS:
            await bench_ingest(Path(tmp))
        if "reports" in PARTS:
            await bench_reports(Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
