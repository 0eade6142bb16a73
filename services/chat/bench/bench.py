"""Chat benchmark "pairs" (make bench-chat): real WebSocket clients (k6) through two chat pods.

C conversations, each with a visitor socket and an agent socket on different
pods (``--writers a``, the default: every visitor on pod A, so one pod does all
the writes and its group commits are largest; ``--writers both``: visitors
alternate between pod A and pod B by pair, as a gateway spreading sockets
would place them); every visitor sends one ~100-byte message per period; every message is
persisted (PostgreSQL, with its outbox event relayed to RabbitMQ) and fanned
out over Redis to the agent on the other pod. Reports delivered/s, loss,
end-to-end latency, pod memory per connection and CPU per 1,000 messages for
every process involved (k6 included).

    uv run python services/chat/bench/bench.py --pairs 1000 --seconds 30

``--topology`` (issue #3) picks where the chat data lives:

- ``shared-db`` (default): one database on the shared server (``POSTGRES_URL``),
  the layout of every run before issue #3.
- ``one-db``: one database on a private PostgreSQL primary
  (``livedesk.platform.testing.pg_private``).
- ``two-shards-replica``: on the same kind of private primary, two shard
  databases (``CHAT_SHARDS``: logical shards 0-511 on ``db0``, which is also
  the directory ``DATABASE_URL``, 512-1023 on ``db1``) and a real streaming
  replica of the primary (``pg_basebackup -R``) serving both databases'
  history reads (``CHAT_READ_REPLICAS``).
- ``both``: ``one-db`` then ``two-shards-replica`` on one private primary, with
  a comparison table: persisted messages/s (rows counted in PostgreSQL), ack
  and end-to-end latency, loss, replica reads.

The private primary exists because the shared server refuses replication
connections; ``one-db`` runs on it too so both are compared on the same
server settings (fsync off, 16 MB shared buffers). Every server, database,
pod and temporary directory a run starts is stopped and removed at its end.

    uv run python services/chat/bench/bench.py --pairs 1000 --seconds 20 --topology both
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
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg

from livedesk.chat.passwords import hash_password
from livedesk.chat.shards import ShardMap, open_shards
from livedesk.platform.auth import AuthSettings, load_issuer
from livedesk.platform.ids import uuid7
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, ensure_database, open_database
from livedesk.platform.testing import ServiceProcess, free_port, wait_until
from livedesk.platform.testing.pg_private import (
    cluster_owner,
    private_primary,
    run,
    server_bindir,
)
from livedesk.platform.testing.pg_replica import streaming_replica

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "docs" / "benchmarks" / "chat.md"
ADMIN_DSN = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CLK = os.sysconf("SC_CLK_TCK")


# --- Topologies: where the chat data lives (--topology) ---

TOPOLOGIES = ("shared-db", "one-db", "two-shards-replica")
# private_primary allows 50 connections; two pods with a pool of 20 on each of
# two databases (plus relays and the bench's own) need more.
MAX_CONNECTIONS = 200


@dataclass
class Databases:
    """One run's databases: the pods' environment and what the bench measures."""

    name: str
    directory: str
    shard_map: ShardMap
    env: dict[str, str] = field(default_factory=dict)
    postgres_pids: Callable[[], list[int]] = list

    def shard_dsns(self) -> list[str]:
        """The DSN of each distinct physical database holding messages."""
        return list(dict.fromkeys(self.shard_map.databases.values()))


@dataclass
class PrivateServer:
    """A private primary (URL, data directory) that replicas can stream from."""

    url: str
    data_dir: Path

    def database(self, name: str) -> str:
        """The DSN of database ``name`` on this server."""
        return urlunsplit(urlsplit(self.url)._replace(path=f"/{name}"))


def cluster_pids(data_dir: Path) -> list[int]:
    """The postmaster of ``data_dir`` and its children (backends, walsender, workers)."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            pids.append(int(stat.parent.name))
    return pids


@asynccontextmanager
async def private_server() -> AsyncIterator[PrivateServer]:
    """A private primary with room for the pods' connections, gone when the block ends."""
    async with private_primary() as url:
        conn = await asyncpg.connect(url)
        try:
            data_dir = Path(await conn.fetchval("SHOW data_directory"))
            await conn.execute(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
        finally:
            await conn.close()
        # max_connections needs a restart; postgresql.auto.conf (ALTER SYSTEM)
        # overrides the config file private_primary wrote, and pg_ctl restart
        # keeps its command line (port, config file). A log file, or the new
        # server would hold run()'s output pipes open and it would never return.
        restarted = await run(
            [str(server_bindir() / "pg_ctl"), "-D", str(data_dir),
             "-l", str(data_dir.parent / "log"), "-m", "fast", "-w", "restart"],
            cluster_owner(str(data_dir)),
        )  # fmt: skip
        if restarted.returncode != 0:
            raise RuntimeError(f"private primary did not restart: {restarted.stderr}")
        yield PrivateServer(url, data_dir)


async def _drop(dsn: str) -> None:
    parts = urlsplit(dsn)
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def topology(name: str, tag: str, server: PrivateServer | None) -> AsyncIterator[Databases]:
    """The databases of topology ``name`` (created, then dropped or stopped afterwards)."""
    if name == "shared-db":
        dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/bench_chat_{tag}"
        dsns = [dsn]
    else:
        if server is None:
            raise ValueError(f"topology {name} needs a private server")
        dsn = server.database(f"bench_chat_{tag}")
        dsns = [dsn] if name == "one-db" else [dsn, server.database(f"bench_chat_{tag}_s1")]
    for each in dsns:
        await ensure_database(each)
    try:
        if name == "shared-db":
            # Every postgres process of the shared server, other users' backends included.
            yield Databases(name, dsn, ShardMap.single(dsn), {}, partial(pids_named, "postgres"))
        elif name == "one-db":
            assert server is not None
            pids = server.data_dir
            yield Databases(name, dsn, ShardMap.single(dsn), {}, lambda: cluster_pids(pids))
        else:
            assert server is not None
            async with streaming_replica(server.url) as replica:
                names = {"db0": dsns[0], "db1": dsns[1]}
                replicas = {n: replica.url(urlsplit(d).path.lstrip("/")) for n, d in names.items()}
                shard_map = ShardMap(names, ((0, 511, "db0"), (512, 1023, "db1")))
                primary_dir = server.data_dir
                yield Databases(
                    name,
                    dsn,
                    ShardMap(names, shard_map.ranges, replicas=replicas),
                    {
                        "CHAT_SHARDS": shard_map.to_json(),
                        "CHAT_READ_REPLICAS": json.dumps(replicas),
                    },
                    lambda: cluster_pids(primary_dir) + cluster_pids(replica.data_dir),
                )
    finally:
        for each in dsns:
            await _drop(each)


def pids_named(name: str) -> list[int]:
    """PIDs whose command name is ``name`` (e.g. postgres, redis-server, beam.smp)."""
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


async def replica_caught_up(databases: Databases, timeout: float = 60) -> bool:
    """Until every replica holds as many messages as its primary (False if none)."""
    replicas = databases.shard_map.replicas
    for name, replica_dsn in replicas.items():
        primary = await asyncpg.connect(databases.shard_map.databases[name])
        replica = await asyncpg.connect(replica_dsn)
        try:
            want = await primary.fetchval("SELECT count(*) FROM messages")

            async def has_all(replica: asyncpg.Connection = replica, want: int = want) -> bool:
                return bool(await replica.fetchval("SELECT count(*) FROM messages") == want)

            await wait_until(has_all, timeout=timeout, what=f"replica of {name} caught up")
        finally:
            await primary.close()
            await replica.close()
    return bool(replicas)


# --- The scenario ---


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


@dataclass
class Setup:
    tenant: uuid.UUID
    pairs: list[dict[str, str]]


async def seed(databases: Databases, pairs: int, agents: int) -> Setup:
    """A tenant, ``agents`` agents and ``pairs`` assigned conversations, written in bulk.

    Directory rows (and ``conversation_index``) on ``DATABASE_URL``; each
    conversation on the shard database the pods' shard map says.
    """
    pool = await open_database(
        databases.directory, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"]
    )
    shard_map = databases.shard_map
    primaries = ShardMap(shard_map.databases, shard_map.ranges, shard_map.logical_shards)
    shards = await open_shards(primaries, directory_dsn=databases.directory, directory_pool=pool)
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
        rows = {
            c: (c, tenant, inbox, v, "assigned", agent_ids[i % agents])
            for i, (c, v) in enumerate(zip(conversations, visitors, strict=True))
        }
        await conn.copy_records_to_table(
            "conversation_index",
            records=[(c, t, v, status, a) for c, t, _, v, status, a in rows.values()],
            columns=["id", "tenant_id", "visitor_id", "status", "agent_id"],
        )
    for name, ids in shards.group(conversations).items():
        await shards.pool(name).copy_records_to_table(
            "conversations",
            records=[rows[c] for c in ids],
            columns=["id", "tenant_id", "inbox_id", "visitor_id", "status", "agent_id"],
        )
    await shards.close(keep=[pool])
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


async def count_messages(pools: list[asyncpg.Pool], what: str = "*") -> list[int]:
    """``count(what)`` of ``messages`` on each shard database."""
    return [int(await p.fetchval(f"SELECT count({what}) FROM messages")) for p in pools]


async def replica_reads(pods: list[ServiceProcess]) -> dict[str, int]:
    """The pods' ``livedesk_chat_replica_reads_total`` by outcome (summed over pods)."""
    return await pod_counter(pods, "livedesk_chat_replica_reads_total", "outcome")


async def pod_counter(pods: list[ServiceProcess], name: str, label: str) -> dict[str, int]:
    """The pods' counter ``name`` by the value of ``label`` (summed over pods)."""
    prefix = name + "{"
    out: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        for pod in pods:
            async with session.get(f"{pod.base_url}/metrics") as resp:
                text = await resp.text()
            for line in text.splitlines():
                if line.startswith(prefix):
                    outcome = line.split(f'{label}="', 1)[1].split('"', 1)[0]
                    out[outcome] = out.get(outcome, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


async def pod_histograms(pods: list[ServiceProcess], name: str) -> list[dict[float, float]]:
    """Each pod's histogram ``name`` as {upper bound: cumulative count}."""
    prefix = name + '_bucket{le="'
    out: list[dict[float, float]] = []
    async with aiohttp.ClientSession() as session:
        for pod in pods:
            async with session.get(f"{pod.base_url}/metrics") as resp:
                text = await resp.text()
            buckets: dict[float, float] = {}
            for line in text.splitlines():
                if line.startswith(prefix):
                    le = line[len(prefix) :].split('"', 1)[0]
                    buckets[float(le)] = float(line.rsplit(" ", 1)[1])
            out.append(buckets)
    return out


def histogram_quantiles(
    before: dict[float, float], after: dict[float, float], qs: tuple[float, ...] = (0.5, 0.99)
) -> dict[str, Any]:
    """Quantiles (ms, the bucket bound reached) and the count of what happened in between."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    out: dict[str, Any] = {"n": int(total)}
    for q in qs:
        bound = next((b for b, c in zip(bounds, counts, strict=True) if c >= q * total), None)
        if bound is None or total == 0:
            out[f"p{round(q * 100)}_ms"] = None
        else:
            out[f"p{round(q * 100)}_ms"] = "inf" if bound == float("inf") else bound * 1000
    return out


async def run_pairs(
    args: argparse.Namespace, topology_name: str, server: PrivateServer | None
) -> dict[str, Any]:
    """One run of the scenario on a fresh ``topology_name`` (everything removed afterwards)."""
    tag = uuid.uuid4().hex[:10]
    async with topology(topology_name, tag, server) as databases:
        return await main(args, databases, tag)


async def main(args: argparse.Namespace, databases: Databases, tag: str) -> dict[str, Any]:
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
    k6_proc: subprocess.Popen[bytes] | None = None
    try:
        setup = await seed(databases, args.pairs, max(1, math.ceil(args.pairs / 50)))
        env = {
            **databases.env,
            "DATABASE_URL": databases.directory,
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
            "WRITERS": args.writers,
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
                "postgres": databases.postgres_pids(),
                "redis": pids_named("redis-server"),
                "rabbitmq": pids_named("beam.smp"),
                "k6": [k6_proc.pid],
            }

        # Steady state: from a few seconds after the start to a few before the end.
        await asyncio.sleep(max(0.0, start_at - time.time()) + 3)
        cpu0 = {k: {p: cpu_seconds(p) for p in v} for k, v in watched().items()}
        lag0 = await pod_histograms(pods, "livedesk_event_loop_lag_seconds")
        send0 = await pod_histograms(pods, "livedesk_chat_send_seconds")
        commit0 = await pod_histograms(pods, "livedesk_chat_group_commit_seconds")
        t0 = time.monotonic()
        async with AsyncExitStack() as stack:
            pools = [
                await stack.enter_async_context(asyncpg.create_pool(d, min_size=1, max_size=1))
                for d in databases.shard_dsns()
            ]
            seq0 = sum(await count_messages(pools))
            await asyncio.sleep(max(1.0, args.seconds - 6))
            during = [rss_kib(p.proc.pid) for p in pods]  # type: ignore[union-attr]
            # A process born inside the window counts whole; one that died is lost.
            cpu = {
                k: sum(max(0.0, cpu_seconds(p) - cpu0[k].get(p, 0.0)) for p in v)
                for k, v in watched().items()
            }
            window = time.monotonic() - t0
            seq1 = sum(await count_messages(pools))
            lag1 = await pod_histograms(pods, "livedesk_event_loop_lag_seconds")
            send1 = await pod_histograms(pods, "livedesk_chat_send_seconds")
            commit1 = await pod_histograms(pods, "livedesk_chat_group_commit_seconds")
            await asyncio.to_thread(k6_proc.wait, timeout=args.seconds + 300)
            per_shard = await count_messages(pools)
            distinct = sum(await count_messages(pools, "DISTINCT (conversation_id, client_msg_id)"))
        replica = await replica_reads(pods)
        commits = await pod_counter(pods, "livedesk_chat_group_commits_total", "unit")
        caught_up = await replica_caught_up(databases)
        metrics = json.loads(summary.read_text())["metrics"]

        def count(name: str) -> int:
            return int(metrics.get(name, {}).get("count", 0))

        lat = metrics.get("e2e_latency", {})
        ack = metrics.get("ack_latency", {})
        msgs_window = seq1 - seq0
        result = {
            "topology": databases.name,
            "pairs": args.pairs,
            "connections": 2 * args.pairs,
            "rate_per_s": round(args.pairs * 1000 / args.period_ms),
            "opened": count("ws_opened"),
            "sent": count("msgs_sent"),
            "acked": count("msgs_acked"),
            "delivered": count("msgs_delivered"),
            "duplicates": count("msgs_duplicate"),
            "errors": count("ws_errors"),
            "stored": sum(per_shard),
            "stored_per_database": per_shard,
            "stored_distinct": distinct,
            "replica_reads": replica,
            "replica_caught_up": caught_up,
            # messages per group-commit statement over the whole run (MESSAGE_BATCH_MAX)
            "mean_batch": round(
                commits.get("messages", 0) / max(1, commits.get("statements", 0)), 1
            ),
            "lost": count("msgs_acked") - count("msgs_delivered"),
            "persisted_per_s": round(msgs_window / window),
            "p50_ms": round(lat.get("med", 0), 1),
            "p95_ms": round(lat.get("p(95)", 0), 1),
            "p99_ms": round(lat.get("p(99)", 0), 1),
            "max_ms": round(lat.get("max", 0), 1),
            "ack_p50_ms": round(ack.get("med", 0), 1),
            "ack_p99_ms": round(ack.get("p(99)", 0), 1),
            "pod_kib_per_conn": round(
                sum(d - b for d, b in zip(during, baseline, strict=True)) / (2 * args.pairs), 1
            ),
            "cpu_s_per_1000_msgs": {
                k: round(v / max(msgs_window, 1) * 1000, 3) for k, v in cpu.items()
            },
            "cpu_cores": {k: round(v / window, 2) for k, v in cpu.items()},
            # Inside the pods, over the steady-state window (bucket bounds, not exact):
            # how late each pod's event loop ran a due wake-up, and a send's frame -> ack.
            "loop_lag": [histogram_quantiles(b, a) for b, a in zip(lag0, lag1, strict=True)],
            "send_in_pod": [histogram_quantiles(b, a) for b, a in zip(send0, send1, strict=True)],
            "group_commit": [
                histogram_quantiles(b, a) for b, a in zip(commit0, commit1, strict=True)
            ],
        }
        return result
    finally:
        if k6_proc is not None and k6_proc.poll() is None:  # the run failed mid-way
            k6_proc.kill()
            k6_proc.wait()
        for pod in pods:
            pod.stop_quietly()
        await channel.queue_delete(f"{prefix}sink")
        for suffix in ("chat", "chat.dlq", "chat.retry.0", "chat.retry.1", "chat.retry.2"):
            await channel.queue_delete(prefix + suffix)
        await channel.exchange_delete(exchange)
        await amqp.close()
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


def comparison_row(r: dict[str, Any]) -> str:
    """One row of the topology comparison table."""
    cpu = r["cpu_cores"]
    reads = r["replica_reads"]
    return (
        f"| {r['topology']} | {r['pairs']:,} | {r['rate_per_s']:,} | {r['persisted_per_s']:,} "
        f"| {' + '.join(f'{n:,}' for n in r['stored_per_database'])} | {r['sent']:,} "
        f"| {r['acked']:,} | {r['delivered']:,} | {r['sent'] - r['stored_distinct']} "
        f"| {r['ack_p50_ms']} | {r['ack_p99_ms']} "
        f"| {r['p50_ms']} | {r['p99_ms']} "
        f"| {reads.get('replica', 0):,} / {reads.get('fallback', 0):,} / {reads.get('error', 0):,} "
        f"| {cpu['chat pods']} / {cpu['postgres']} |"
    )


def comparison_table(rows: list[str]) -> str:
    return (
        f"\n### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — topologies: "
        f"`{' '.join(sys.argv)}` on {platform.node()} ({os.cpu_count()} cores, shared with "
        "other work)\n\n"
        "| topology | pairs | offered msg/s | persisted msg/s (rows counted) | rows per database "
        "| sent | acked | delivered | lost: sent - stored | ack p50 ms | ack p99 ms "
        "| e2e p50 ms | e2e p99 ms "
        "| replica reads: replica / fallback / error | cores: pods / private pg |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


async def run_topologies(args: argparse.Namespace, names: list[str]) -> list[dict[str, Any]]:
    """Each topology in turn for each size; one private primary for all when needed."""
    results = []
    async with AsyncExitStack() as stack:
        server = None
        if any(n != "shared-db" for n in names):
            server = await stack.enter_async_context(private_server())
        for pairs in args.pairs:
            for name in names:
                one = argparse.Namespace(**{**vars(args), "pairs": pairs})
                result = await run_pairs(one, name, server)
                print(json.dumps(result), flush=True)
                results.append(result)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 2500])
    parser.add_argument("--period-ms", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--per-vu", type=int, default=50)
    parser.add_argument("--pool", type=int, default=20)
    # k6 runs with GOGC=off, so GOMEMLIMIT is when its garbage collector starts.
    # It allocates ~100 MB/s at C = 2,500: with 3 GiB it reached the limit inside
    # the send window and collected continuously from then on, which showed as
    # a p99 of 200-350 ms that was k6's, not the pods' (11-12 GiB fits a whole run).
    parser.add_argument("--k6-memory", default="12GiB")
    parser.add_argument(
        "--topology",
        choices=[*TOPOLOGIES, "both"],
        default="shared-db",
        help="where the data lives (topology.py); both = one-db then two-shards-replica",
    )
    parser.add_argument(
        "--writers",
        choices=["a", "both"],
        default="a",
        help="visitors (the senders) on both pods, alternating by pair, or all on pod A",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--write", action="store_true", help=f"append results to {RESULTS}")
    args = parser.parse_args()
    names = ["one-db", "two-shards-replica"] if args.topology == "both" else [args.topology]
    results = asyncio.run(run_topologies(args, names))
    if args.topology == "shared-db":
        table = (
            f"\n### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — `{' '.join(sys.argv)}` on "
            f"{platform.node()} ({os.cpu_count()} cores)\n\n"
            "| pairs | sockets | offered msg/s | persisted msg/s | acked | delivered | lost "
            "| p50 ms | p95 ms | p99 ms | pod KiB/conn | pod CPU-s/1k msgs "
            "| cores: pods / pg / redis / rabbit / k6 |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(row(r) for r in results)
            + "\n"
        )
    else:
        table = comparison_table([comparison_row(r) for r in results])
    print(table)
    if args.write:
        with RESULTS.open("a") as out:
            out.write(table)
