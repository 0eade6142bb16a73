"""Chat benchmark "history" (make bench-chat): latency of a 50-message history page by source.

Starts a private PostgreSQL primary (livedesk.platform.testing.pg_private)
and a real streaming replica of it (pg_basebackup -R), and a private Redis
for the hot cache. Fills C conversations with M messages each through the
store's real write path (so the hot cache holds the last 100 of each, as a
pod's write-through leaves it), then starts one real chat pod per source
and measures ``GET /api/v1/conversations/{id}/messages?limit=50`` (the
latest page), one request at a time over a kept-alive connection:

- primary: no replica, no hot cache (conversation row and page from the primary);
- replica: ``CHAT_READ_REPLICAS`` (conversation row and page from the replica);
- hot cache: ``HOT_CACHE_REDIS_URL`` (conversation row from the primary, page from Redis).

Each pod's own counters prove the page came from where it says. Reports
p50/p99/max in ms, client side (HTTP through aiohttp included).

    uv run python services/chat/bench/history_replica.py --conversations 10 --messages 120
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import redis.asyncio as aioredis

from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.hot_cache import HotCache
from livedesk.chat.models import Inbox
from livedesk.chat.shards import ShardMap, open_shards
from livedesk.chat.testing import visitor_says
from livedesk.integration_support.chat_pods import seeded_chat
from livedesk.platform.auth import AuthSettings, load_issuer
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, ensure_database, open_database
from livedesk.platform.testing import ServiceProcess, free_port, wait_until
from livedesk.platform.testing.pg_private import private_primary
from livedesk.platform.testing.pg_replica import streaming_replica
from livedesk.platform.testing.pytest_plugin import BusNames, delete_bus
from livedesk.platform.testing.redis_server import private_redis
from livedesk.platform.testing.servers import find_servers

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "docs" / "benchmarks" / "chat.md"
PAGE = 50
HOT_MESSAGES = 100

# The pod counter that proves each source served the pages: (metric line prefix).
SERVED_BY = {
    "primary": None,
    "replica": 'livedesk_chat_replica_reads_total{outcome="replica"}',
    "hot cache": 'livedesk_chat_hot_cache_reads_total{outcome="hit"}',
}


async def fill(
    database: str, redis_url: str, inbox: Inbox, conversations: int, messages: int
) -> list[str]:
    """Conversations of ``messages`` visitor messages, written through the store (and cache)."""
    pool = await open_database(database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    shards = await open_shards(
        ShardMap.single(database), directory_dsn=database, directory_pool=pool
    )
    redis = aioredis.Redis.from_url(redis_url)
    try:
        directory = Directory(pool)
        hot = HotCache(redis, max_messages=HOT_MESSAGES)
        store = ConversationStore(pool, shards, hot=hot)
        ids = []
        for _ in range(conversations):
            visitor = await directory.create_visitor(inbox)
            conversation = await store.create(inbox, visitor.id)
            await visitor_says(
                store,
                conversation,
                *(f"message {i} about order 42, asking when it ships" for i in range(messages)),
            )
            ids.append(str(conversation.id))
        if hot.stats.write_errors:
            raise RuntimeError(f"{hot.stats.write_errors} hot-cache write-throughs failed")
        return ids
    finally:
        await redis.aclose()
        await shards.close(keep=[pool])
        await pool.close()


async def store_reads(
    database: str, replica_dsn: str, redis_url: str, conversations: list[str], requests: int
) -> dict[str, dict[str, float]]:
    """The same page through ConversationStore.messages_before in this process (no HTTP)."""
    pool = await open_database(database, [])
    redis = aioredis.Redis.from_url(redis_url)
    ids = [uuid.UUID(c) for c in conversations]
    try:
        last = {
            c: await pool.fetchval("SELECT last_seq FROM conversations WHERE id = $1", c)
            for c in ids
        }
        sources = {
            "primary": (ShardMap.single(database), None),
            "replica": (ShardMap.single(database, replica_dsn), None),
            "hot cache": (ShardMap.single(database), HotCache(redis, max_messages=HOT_MESSAGES)),
        }
        results = {}
        for source, (shard_map, hot) in sources.items():
            shards = await open_shards(shard_map, directory_dsn=database, directory_pool=pool)
            store = ConversationStore(pool, shards, hot=hot)
            try:
                results[source] = await _timed(_store_page(store, ids, last), requests)
            finally:
                await shards.close(keep=[pool])
            served = {"replica": store.replica_reads, "hot cache": hot.stats.hits if hot else 0}
            if served.get(source, requests) < requests:
                raise RuntimeError(f"{source} served only {served[source]} of {requests} pages")
    finally:
        await redis.aclose()
        await pool.close()
    return results


def _store_page(
    store: ConversationStore, ids: list[uuid.UUID], last: dict[uuid.UUID, int]
) -> Callable[[int], Awaitable[None]]:
    async def page(i: int) -> None:
        conversation = ids[i % len(ids)]
        # PAGE + 1, as the REST handler asks (to tell whether there is more).
        got = await store.messages_before(conversation, last[conversation] + 1, PAGE + 1)
        if len(got) != PAGE + 1:
            raise RuntimeError(f"short page: {len(got)}")

    return page


async def _timed(read: Callable[[int], Awaitable[None]], requests: int) -> dict[str, float]:
    """``read(i)`` for a warm-up, then ``requests`` times one at a time: ms percentiles."""
    for i in range(max(50, requests // 10)):  # warm the pool, the connection, the caches
        await read(i)
    latencies = []
    for i in range(requests):
        started = time.perf_counter()
        await read(i)
        latencies.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests": requests,
        "p50_ms": round(cuts[49], 2),
        "p99_ms": round(cuts[98], 2),
        "max_ms": round(max(latencies), 2),
    }


async def _counter(session: aiohttp.ClientSession, pod: ServiceProcess, line: str | None) -> float:
    if line is None:
        return 0.0
    async with session.get(f"{pod.base_url}/metrics") as resp:
        text = await resp.text()
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line + " "))


async def measure(
    pod: ServiceProcess, token: str, conversations: list[str], requests: int, source: str
) -> dict[str, float]:
    """Latest-page reads, one at a time; latency percentiles in ms."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def page(i: int) -> None:
            conversation = conversations[i % len(conversations)]
            url = f"{pod.base_url}/api/v1/conversations/{conversation}/messages?limit={PAGE}"
            async with session.get(url) as resp:
                body = await resp.json()
            if resp.status != 200 or len(body["items"]) != PAGE:
                raise RuntimeError(f"bad page: {resp.status} {body}")

        served = await _counter(session, pod, SERVED_BY[source])
        result = await _timed(page, requests)
        served = await _counter(session, pod, SERVED_BY[source]) - served
    if SERVED_BY[source] is not None and served < requests:
        raise RuntimeError(f"{source} served only {served} of {requests} pages")
    return result


async def main(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """Servers up, fill, one pod per source, measure; everything stopped and removed."""
    workdir = Path(tempfile.mkdtemp(prefix="livedesk-history-bench-"))
    tag = f"{os.getpid()}{int(time.time())}"
    with ExitStack() as sync_stack:
        servers = find_servers(sync_stack)
        bus = BusNames(servers.amqp_url, f"bench.{tag}.events", f"bench.{tag}.")
        async with AsyncExitStack() as stack:
            stack.callback(shutil.rmtree, workdir, True)
            primary = await stack.enter_async_context(private_primary())
            database = urlunsplit(urlsplit(primary)._replace(path="/chat_history_bench"))
            await ensure_database(database)
            stack.push_async_callback(delete_bus, bus)
            org, env = await seeded_chat(database, servers, bus)
            redis_url = await stack.enter_async_context(private_redis(workdir))
            conversations = await fill(
                database, redis_url, org.inbox, args.conversations, args.messages
            )
            replica = await stack.enter_async_context(streaming_replica(primary))
            replica_dsn = replica.url("chat_history_bench")
            await _caught_up(database, replica_dsn)
            token = load_issuer(AuthSettings(livedesk_env="test")).issue(
                subject=str(org.admin.id),
                tenant_id=str(org.tenant.id),
                role="admin",
                token_type="access",
                ttl=dt.timedelta(minutes=30),
            )
            sources = {
                "primary": {"HOT_CACHE_MESSAGES": "0"},
                "replica": {
                    "HOT_CACHE_MESSAGES": "0",
                    "CHAT_READ_REPLICAS": json.dumps({"main": replica_dsn}),
                },
                "hot cache": {
                    "HOT_CACHE_MESSAGES": str(HOT_MESSAGES),
                    "HOT_CACHE_REDIS_URL": redis_url,
                },
            }
            results: dict[str, dict[str, float]] = {}
            for source, extra in sources.items():
                port = free_port()
                pod = ServiceProcess(
                    "livedesk.chat",
                    {**env, **extra, "PORT": str(port), "POD_ID": f"bench-history-{port}",
                     "LOG_LEVEL": "WARNING", "ASSIGNMENT_GRPC_URL": f"127.0.0.1:{free_port()}"},
                    workdir / f"pod-{port}.log",
                    port,
                )  # fmt: skip
                try:
                    await pod.start().wait_ready(timeout=60)
                    results[source] = await measure(
                        pod, token, conversations, args.requests, source
                    )
                finally:
                    pod.stop_quietly()
                print("REST", source, json.dumps(results[source]), flush=True)
            store = await store_reads(
                database, replica_dsn, redis_url, conversations, args.requests
            )
            print("store", json.dumps(store), flush=True)
            return {"REST GET through a chat pod": results, "ConversationStore, in process": store}
    raise AssertionError("unreachable")


async def _caught_up(primary_dsn: str, replica_dsn: str) -> None:
    """Until the replica has replayed every message the primary holds."""
    primary, replica = await open_database(primary_dsn, []), await open_database(replica_dsn, [])
    try:
        want = await primary.fetchval("SELECT count(*) FROM messages")

        async def has_all() -> bool:
            return bool(await replica.fetchval("SELECT count(*) FROM messages") == want)

        await wait_until(has_all, timeout=60, what="the replica caught up")
    finally:
        await primary.close()
        await replica.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--messages", type=int, default=120)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--write", action="store_true", help=f"append results to {RESULTS}")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    table = (
        f"\n### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — history page by source: "
        f"`{' '.join(sys.argv)}` on {platform.node()} ({os.cpu_count()} cores, shared with "
        "other work)\n\n"
        f"{args.conversations} conversations x {args.messages} messages; latest page of "
        f"{PAGE}, {args.requests} requests one at a time per source.\n\n"
        "| path | source | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n"
        + "".join(
            f"| {path} | {source} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |\n"
            for path, by_source in results.items()
            for source, r in by_source.items()
        )
    )
    print(table)
    if args.write:
        with RESULTS.open("a") as out:
            out.write(table)
