"""Chat benchmark "pairs" (make bench-chat): real WebSocket clients (k6) through two chat pods.

C conversations, each with a visitor socket on pod A and an agent socket on pod
B; every visitor sends one ~100-byte message per period; every message is
persisted (PostgreSQL, with its outbox event relayed to RabbitMQ) and fanned
out over Redis to the agent on the other pod. Reports delivered/s, loss,
end-to-end latency, pod memory per connection and CPU per 1,000 messages for
every process involved (k6 included).

    uv run python services/chat/bench/bench.py --pairs 1000 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg

from livedesk.chat.passwords import hash_password
from livedesk.chat.shards import SHARD_MIGRATIONS
from livedesk.platform.auth import AuthSettings, load_issuer
from livedesk.platform.ids import uuid7
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing import ServiceProcess, free_port

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "docs" / "benchmarks" / "chat.md"
ADMIN_DSN = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pids_named(name: str) -> list[int]:
    """PIDs whose command name is ``name`` (e.g. postgres, redis-server, beam.smp)."""
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


@dataclass
class Setup:
    database: str
    tenant: uuid.UUID
    pairs: list[dict[str, str]]


async def seed(database: str, pairs: int, agents: int) -> Setup:
    """A tenant, ``agents`` agents and ``pairs`` assigned conversations, written in bulk."""
    pool = await open_database(
        database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations", SHARD_MIGRATIONS]
    )
    tenant, inbox = uuid7(), uuid7()
    hashed = await hash_password("bench-password")
    agent_ids = [uuid7() for _ in range(agents)]
    visitors = [uuid7() for _ in range(pairs)]
    conversations = [uuid7() for _ in range(pairs)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO tenants (id, slug, name) VALUES ($1, 'bench', 'Bench')", tenant
        )
        await conn.execute(
            "INSERT INTO inboxes (id, tenant_id, name, widget_key) VALUES ($1, $2, 'w', $3)",
            inbox,
            tenant,
            f"wk_{uuid.uuid4().hex}",
        )
        await conn.copy_records_to_table(
            "users",
            records=[
                (a, tenant, f"agent{i}@bench.example", f"Agent {i}", "agent", hashed)
                for i, a in enumerate(agent_ids)
            ],
            columns=["id", "tenant_id", "email", "display_name", "role", "password_hash"],
        )
        await conn.copy_records_to_table(
            "visitors",
            records=[(v, tenant, inbox) for v in visitors],
            columns=["id", "tenant_id", "inbox_id"],
        )
        await conn.copy_records_to_table(
            "conversations",
            records=[
                (c, tenant, inbox, v, "assigned", agent_ids[i % agents])
                for i, (c, v) in enumerate(zip(conversations, visitors, strict=True))
            ],
            columns=["id", "tenant_id", "inbox_id", "visitor_id", "status", "agent_id"],
        )
    await pool.close()
    issuer = load_issuer(AuthSettings(livedesk_env="test"))

    def ticket(subject: uuid.UUID, role: str) -> str:
        return issuer.issue(
            subject=str(subject),
            tenant_id=str(tenant),
            role=role,  # type: ignore[arg-type]
            token_type="ws_ticket",
            ttl=dt.timedelta(minutes=30),
        )

    return Setup(
        database,
        tenant,
        [
            {
                "conversation_id": str(c),
                "visitor_ticket": ticket(v, "visitor"),
                "agent_ticket": ticket(agent_ids[i % agents], "agent"),
            }
            for i, (c, v) in enumerate(zip(conversations, visitors, strict=True))
        ],
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    database_name = f"bench_chat_{tag}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{database_name}"')
    await admin.close()
    database = ADMIN_DSN.rsplit("/", 1)[0] + f"/{database_name}"
    exchange, prefix = f"bench.{tag}.events", f"bench.{tag}."
    # A sink bound to every event, so the outbox relay does its full job; the
    # broker drops old ones instead of piling them up.
    amqp = await aio_pika.connect(AMQP_URL)
    channel = await amqp.channel()
    ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    sink = await channel.declare_queue(
        f"{prefix}sink", arguments={"x-max-length": 10_000, "x-overflow": "drop-head"}
    )
    await sink.bind(ex, "#")
    workdir = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    pods: list[ServiceProcess] = []
    try:
        setup = await seed(database, args.pairs, max(1, math.ceil(args.pairs / 50)))
        env = {
            "DATABASE_URL": database,
            "REDIS_URL": REDIS_URL,
            "AMQP_URL": AMQP_URL,
            "AMQP_EXCHANGE": exchange,
            "AMQP_QUEUE_PREFIX": prefix,
            "DB_AUTO_CREATE": "false",
            "DB_POOL_SIZE": str(args.pool),
            "LIVEDESK_ENV": "test",
            "LOG_LEVEL": "WARNING",
            "WS_CONNECTIONS_PER_USER": "10000",
            "WS_MESSAGES_PER_SECOND": "1000",
            "WS_MESSAGE_BURST": "1000",
            "PRESENCE_INTERVAL": "300",
            "ASSIGNMENT_GRPC_URL": f"127.0.0.1:{free_port()}",
        }
        for i in range(2):
            port = free_port()
            pods.append(
                ServiceProcess(
                    "livedesk.chat",
                    {**env, "PORT": str(port), "POD_ID": f"bench-{i}"},
                    workdir / f"pod{i}.log",
                    port,
                ).start()
            )
        for pod in pods:
            await pod.wait_ready(timeout=60)
        pairs_file = workdir / "pairs.json"
        pairs_file.write_text(json.dumps(setup.pairs))
        baseline = [rss_kib(p.proc.pid) for p in pods]  # type: ignore[union-attr]
        ramp = max(10.0, args.pairs * 2 / 800)
        start_at = time.time() + ramp
        vus = math.ceil(args.pairs / args.per_vu)
        summary = workdir / "summary.json"
        k6 = shutil.which("k6") or str(Path(sys.executable).parent / "k6")
        k6_env = {
            **os.environ,
            "GOGC": "off",
            "GOMEMLIMIT": args.k6_memory,
            "PAIRS_FILE": str(pairs_file),
            "PAIRS_PER_VU": str(args.per_vu),
            "VUS": str(vus),
            "PERIOD_MS": str(args.period_ms),
            "SEND_SECONDS": str(args.seconds),
            "SETTLE_MS": "5000",
            "START_AT": str(int(start_at * 1000)),
            "POD_A": pods[0].base_url.replace("http", "ws"),
            "POD_B": pods[1].base_url.replace("http", "ws"),
        }
        k6_proc = subprocess.Popen(
            [k6, "run", "--quiet", "--address", "", "--summary-export", str(summary),
             str(Path(__file__).with_name("pairs.js"))],
            env=k6_env, stdout=subprocess.DEVNULL, stderr=open(workdir / "k6.log", "w"),
        )  # fmt: skip

        def watched() -> dict[str, list[int]]:
            return {
                "chat pods": [p.proc.pid for p in pods],  # type: ignore[union-attr]
                # postmaster, background workers and the pods' backends (which the
                # pools open as load grows, so they are listed again at the end)
                "postgres": pids_named("postgres"),
                "redis": pids_named("redis-server"),
                "rabbitmq": pids_named("beam.smp"),
                "k6": [k6_proc.pid],
            }

        # Steady state: from a few seconds after the start to a few before the end.
        await asyncio.sleep(max(0.0, start_at - time.time()) + 3)
        cpu0 = {k: {p: cpu_seconds(p) for p in v} for k, v in watched().items()}
        t0 = time.monotonic()
        async with asyncpg.create_pool(database, min_size=1, max_size=1) as pool:
            seq0 = await pool.fetchval("SELECT count(*) FROM messages")
            await asyncio.sleep(max(1.0, args.seconds - 6))
            during = [rss_kib(p.proc.pid) for p in pods]  # type: ignore[union-attr]
            # A process born inside the window counts whole; one that died is lost.
            cpu = {
                k: sum(max(0.0, cpu_seconds(p) - cpu0[k].get(p, 0.0)) for p in v)
                for k, v in watched().items()
            }
            window = time.monotonic() - t0
            seq1 = await pool.fetchval("SELECT count(*) FROM messages")
            k6_proc.wait(timeout=args.seconds + 300)
            stored = await pool.fetchval("SELECT count(*) FROM messages")
            distinct = await pool.fetchval(
                "SELECT count(DISTINCT (conversation_id, client_msg_id)) FROM messages"
            )
        metrics = json.loads(summary.read_text())["metrics"]

        def count(name: str) -> int:
            return int(metrics.get(name, {}).get("count", 0))

        lat = metrics.get("e2e_latency", {})
        msgs_window = seq1 - seq0
        result = {
            "pairs": args.pairs,
            "connections": 2 * args.pairs,
            "rate_per_s": round(args.pairs * 1000 / args.period_ms),
            "opened": count("ws_opened"),
            "sent": count("msgs_sent"),
            "acked": count("msgs_acked"),
            "delivered": count("msgs_delivered"),
            "duplicates": count("msgs_duplicate"),
            "errors": count("ws_errors"),
            "stored": stored,
            "stored_distinct": distinct,
            "lost": count("msgs_acked") - count("msgs_delivered"),
            "persisted_per_s": round(msgs_window / window),
            "p50_ms": round(lat.get("med", 0), 1),
            "p95_ms": round(lat.get("p(95)", 0), 1),
            "p99_ms": round(lat.get("p(99)", 0), 1),
            "max_ms": round(lat.get("max", 0), 1),
            "pod_kib_per_conn": round(
                sum(d - b for d, b in zip(during, baseline, strict=True)) / (2 * args.pairs), 1
            ),
            "cpu_s_per_1000_msgs": {
                k: round(v / max(msgs_window, 1) * 1000, 3) for k, v in cpu.items()
            },
            "cpu_cores": {k: round(v / window, 2) for k, v in cpu.items()},
        }
        return result
    finally:
        for pod in pods:
            pod.stop_quietly()
        await channel.queue_delete(f"{prefix}sink")
        for suffix in ("chat", "chat.dlq", "chat.retry.0", "chat.retry.1", "chat.retry.2"):
            await channel.queue_delete(prefix + suffix)
        await channel.exchange_delete(exchange)
        await amqp.close()
        admin = await asyncpg.connect(ADMIN_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)')
        await admin.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def row(r: dict[str, Any]) -> str:
    """One markdown table row."""
    cpu = r["cpu_cores"]
    return (
        f"| {r['pairs']:,} | {r['connections']:,} | {r['rate_per_s']:,} | {r['persisted_per_s']:,} "
        f"| {r['acked']:,} | {r['delivered']:,} | {r['lost']} | {r['p50_ms']} | {r['p95_ms']} "
        f"| {r['p99_ms']} | {r['pod_kib_per_conn']} "
        f"| {r['cpu_s_per_1000_msgs']['chat pods']} "
        f"| {cpu['chat pods']} / {cpu['postgres']} / {cpu['redis']} / {cpu['rabbitmq']} "
        f"/ {cpu['k6']} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 2500])
    parser.add_argument("--period-ms", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--per-vu", type=int, default=50)
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--k6-memory", default="3GiB")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--write", action="store_true", help=f"append results to {RESULTS}")
    args = parser.parse_args()
    rows = []
    for pairs in args.pairs:
        one = argparse.Namespace(**{**vars(args), "pairs": pairs})
        result = asyncio.run(main(one))
        print(json.dumps(result), flush=True)
        rows.append(row(result))
    header = (
        f"\n### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — `{' '.join(sys.argv)}` on "
        f"{platform.node()} ({os.cpu_count()} cores)\n\n"
        "| pairs | sockets | offered msg/s | persisted msg/s | acked | delivered | lost "
        "| p50 ms | p95 ms | p99 ms | pod KiB/conn | pod CPU-s/1k msgs "
        "| cores: pods / pg / redis / rabbit / k6 |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    table = header + "\n".join(rows) + "\n"
    print(table)
    if args.write:
        with RESULTS.open("a") as out:
            out.write(table)
