"""Analytics benchmark: ingest rate (RabbitMQ -> chDB) and report latency on a large data set.

1. Ingest: BENCH_INGEST_EVENTS events are published while analytics is stopped
   (its queue holds them), then analytics starts and the time to drain the
   queue into chDB gives the sustained events/s.
2. Reports: BENCH_MESSAGES messages (20 per conversation, plus each
   conversation's lifecycle events and a rating) are generated inside chDB
   as `events` rows (the materialized views fill the report tables as for
   real ingestion), then the service answers GET /overview (30 days) and
   GET /search/messages; p50 / p99 over BENCH_REQUESTS requests each.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from livedesk.analytics.schema import migrate
from livedesk.analytics.store import Store
from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.contracts.events.v1.message_pb2 import MessageCreated
from livedesk.platform.auth import AuthSettings, load_issuer
from livedesk.platform.bus import EventPublisher, connect, new_event
from livedesk.platform.testing import ServiceProcess, free_port, wait_until

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
INGEST_EVENTS = int(os.environ.get("BENCH_INGEST_EVENTS", "200000"))
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "10000000"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "50"))
TENANT = "bench-tenant"
START = dt.datetime(2024, 4, 1, tzinfo=dt.UTC)


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


async def bench_ingest(tmp: Path) -> None:
    tag = f"i{os.getpid()}"
    service = _service(tmp, tag, tmp / "ingest-chdb")
    service.start()
    await service.wait_ready(60)
    service.terminate()
    events = []
    at = START
    for i in range(INGEST_EVENTS):
        conv = f"c{i // 10}"
        if i % 10 == 0:
            payload: object = ConversationCreated(inbox_id="web")
        else:
            payload = MessageCreated(message_id=f"m{i}", seq=i % 10, body=f"hello world {i}")
        events.append(
            new_event(
                payload,  # type: ignore[arg-type]
                tenant_id=TENANT,
                producer="bench",
                conversation_id=conv,
                occurred_at=at + dt.timedelta(milliseconds=i),
            )
        )
    connection = await connect(AMQP_URL, "bench")
    publisher = await EventPublisher.create(connection, f"bench.{tag}.events")
    t0 = time.perf_counter()
    for i in range(0, len(events), 2000):
        await publisher.publish_many(events[i : i + 2000])
    print(f"published {len(events)} events in {time.perf_counter() - t0:.1f}s (analytics stopped)")
    await publisher.close()

    service.start()
    started = time.perf_counter()
    await service.wait_ready(60)

    async def drained() -> bool:
        return await _metric(service.base_url, "livedesk_analytics_events_ingested_total") >= len(
            events
        )

    await wait_until(drained, timeout=1800, interval=0.2, what="backlog ingested")
    elapsed = time.perf_counter() - started
    print(
        f"ingest: {len(events)} events from RabbitMQ into chDB in {elapsed:.1f}s "
        f"(incl. start-up) = {len(events) / elapsed:,.0f} events/s"
    )
    service.terminate()
    channel = await connection.channel()
    for q in (
        "analytics",
        "analytics.dlq",
        "analytics.retry.0",
        "analytics.retry.1",
        "analytics.retry.2",
    ):
        await channel.queue_delete(f"bench.{tag}.{q}")
    await channel.exchange_delete(f"bench.{tag}.events")
    await connection.close()


_GENERATE = """
INSERT INTO events (event_id, type, tenant_id, conversation_id, producer, occurred_at, trace_id,
                    payload, ingested_at)
SELECT generateUUIDv7(), type, '{tenant}', conv, 'bench', at, '', payload, now64(3)
FROM (
    SELECT
        number AS n,
        intDiv(n, 24) AS c,
        n % 24 AS k,
        concat('c', toString(c)) AS conv,
        toDateTime64('{start}', 3, 'UTC') + toIntervalSecond(c * {spacing}) AS t0,
        multiIf(k = 0, 'conversation.created', k = 1, 'conversation.assigned',
                k = 22, 'conversation.resolved', k = 23, 'csat.submitted',
                'message.created') AS type,
        t0 + toIntervalSecond(k * 30 + (c % 7) * 5) AS at,
        concat('ag', toString(c % 40)) AS agent,
        multiIf(
            k = 0, concat('{{"inbox_id":"inbox', toString(c % 5),
                          '","team_id":"team', toString(c % 3), '"}}'),
            k = 1, concat('{{"agent_id":"', agent, '"}}'),
            k = 22, concat('{{"agent_id":"', agent, '","resolved_by":"', agent, '"}}'),
            k = 23, concat('{{"rating":', toString(1 + c % 5), ',"agent_id":"', agent, '"}}'),
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


async def load_reports_data(chdb: Path) -> float:
    conversations = max(1, MESSAGES // 20)
    rows = conversations * 24
    spacing = max(1, (60 * 86400) // conversations)  # spread over 60 days
    store = await Store.open(clickhouse_url=None, chdb_path=str(chdb))
    try:
        await migrate(store)
        t0 = time.perf_counter()
        chunk = 2_400_000
        for offset in range(0, rows, chunk):
            sql = _GENERATE.format(
                tenant=TENANT,
                start=START.strftime("%Y-%m-%d %H:%M:%S"),
                spacing=spacing,
                rows=f"{offset}, {min(chunk, rows - offset)}",
            )
            await store.command(sql)
        elapsed = time.perf_counter() - t0
        counted = await store.query("SELECT count() FROM messages")
        print(
            f"loaded {conversations:,} conversations, {counted[0][0]:,} messages "
            f"({rows:,} events) in {elapsed:.0f}s"
        )
        return elapsed
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
    p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
    print(f"{name}: p50 {statistics.median(timings):.0f} ms, p99 {p99:.0f} ms (n={len(timings)})")


async def bench_reports(tmp: Path) -> None:
    chdb = tmp / "reports-chdb"
    await load_reports_data(chdb)
    service = _service(tmp, f"r{os.getpid()}", chdb)
    service.start()
    try:
        await service.wait_ready(120)
        token = load_issuer(AuthSettings(livedesk_env="test")).issue(
            subject="bench",
            tenant_id=TENANT,
            role="admin",
            token_type="access",
            ttl=dt.timedelta(hours=1),
        )
        headers = {"Authorization": f"Bearer {token}"}
        base = service.base_url
        month = {"from": "2024-04-15T00:00:00Z", "to": "2024-05-15T00:00:00Z"}
        async with aiohttp.ClientSession() as s:
            _summary(
                "overview, 30 days",
                await _latency(s, f"{base}/api/v1/reports/overview", month, headers),
            )
            _summary(
                "overview, 30 days, inbox filter",
                await _latency(
                    s, f"{base}/api/v1/reports/overview", {**month, "inbox_id": "inbox1"}, headers
                ),
            )
            _summary(
                "agents table, 30 days",
                await _latency(s, f"{base}/api/v1/reports/agents", month, headers),
            )
            _summary(
                "search 'parcel' (newest 20)",
                await _latency(s, f"{base}/api/v1/search/messages", {"q": "parcel"}, headers),
            )
            _summary(
                "search '\"tracking number\" 123'",
                await _latency(
                    s, f"{base}/api/v1/search/messages", {"q": '"tracking number" 123'}, headers
                ),
            )
            _summary(
                "search 'refund 777' in April",
                await _latency(
                    s,
                    f"{base}/api/v1/search/messages",
                    {
                        "q": "refund 777",
                        "from": "2024-04-01T00:00:00Z",
                        "to": "2024-05-01T00:00:00Z",
                    },
                    headers,
                ),
            )
    finally:
        service.terminate()


async def main() -> None:
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as tmp:
        await bench_ingest(Path(tmp))
        await bench_reports(Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
