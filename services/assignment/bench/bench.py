"""Assignment benchmark: engine core and end to end over the bus.

Results and method: docs/benchmarks/assignment.md.

    uv run python services/assignment/bench/bench.py            # everything
    uv run python services/assignment/bench/bench.py core 1      # core, 1 replica

Uses the local PostgreSQL, Redis and RabbitMQ (POSTGRES_URL, REDIS_URL, AMQP_URL);
makes its own database, key prefix, exchange and queues, and removes them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import redis.asyncio as aioredis

from livedesk.assignment.engine import Engine, EngineConfig
from livedesk.assignment.recorder import Recorder
from livedesk.assignment.store import RoutingStore
from livedesk.assignment.testing import agent_row, delete_prefix
from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.platform.bus import EventPublisher, connect, decode, new_event
from livedesk.platform.ids import uuid7_str
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing import ServiceProcess, free_port, wait_until
from livedesk.platform.testing.servers import find_servers

AGENTS = 1000
CONVERSATIONS = 10_000
#: What the end-to-end sink binds (see end_to_end); SINK_KEYS=... overrides.
SINK_KEYS = ("conversation.assigned", "conversation.queued", "agent.*")
MIGRATIONS = [PLATFORM_MIGRATIONS, "livedesk.assignment.migrations"]


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / hz, sum(fields) / hz


def _process_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


_SERVERS = {"beam.smp": "rabbitmq", "postgres": "postgres", "redis-server": "redis"}


def _servers_cpu() -> dict[str, float]:
    """CPU seconds of the local servers' processes (with their reaped children)."""
    out = dict.fromkeys(_SERVERS.values(), 0.0)
    hz = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.find("(") + 1 : text.rfind(")")]
        name = _SERVERS.get(comm)
        if name is not None:
            fields = text.rsplit(")", 1)[1].split()
            out[name] += sum(int(x) for x in fields[11:15]) / hz
    return out


class _Cpu:
    """CPU used from now on: this process, optionally a service process, and the machine."""

    def __init__(self, service_pid: int | None = None) -> None:
        self.service_pid = service_pid
        self.own = time.process_time()
        self.service = _process_times(service_pid) if service_pid else (0.0, 0.0)
        self.own_sys = os.times().system
        self.servers = _servers_cpu()
        self.busy, self.total = _machine_busy()

    def report(self, decisions: int, own_name: str = "generator") -> dict[str, Any]:
        busy, total = _machine_busy()
        out: dict[str, Any] = {
            f"{own_name}_cpu_us_per_decision": round(
                (time.process_time() - self.own) / decisions * 1e6
            ),
            "machine_busy_pct": round((busy - self.busy) / (total - self.total) * 100),
            "machine_cpu_us_per_decision": round((busy - self.busy) / decisions * 1e6),
        }
        # The kernel's share (system time): mostly socket I/O.
        out[f"{own_name}_sys_us_per_decision"] = round(
            (os.times().system - self.own_sys) / decisions * 1e6
        )
        if self.service_pid:
            user, system = _process_times(self.service_pid)
            out["service_cpu_us_per_decision"] = round(
                (user + system - sum(self.service)) / decisions * 1e6
            )
            out["service_sys_us_per_decision"] = round((system - self.service[1]) / decisions * 1e6)
        # Approximate: PostgreSQL backends that exit during the run count once reaped.
        for name, seconds in _servers_cpu().items():
            out[f"{name}_cpu_us_per_decision"] = round(
                (seconds - self.servers[name]) / decisions * 1e6
            )
        return out


async def _record_transactions(conn: asyncpg.Connection) -> int:
    """Transactions that recorded the bindings (group commit: far fewer than decisions)."""
    n: int = await conn.fetchval("SELECT count(DISTINCT xmin::text) FROM assignments")
    return n


async def _new_db(admin: str) -> str:
    name = f"bench_{uuid7_str().replace('-', '')[-12:]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return admin.rsplit("/", 1)[0] + f"/{name}"


async def _drop_db(admin: str, dsn: str) -> None:
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    await conn.close()


async def _engine(dsn: str, redis_url: str, prefix: str) -> tuple[Engine, Any]:
    pool = await open_database(dsn, MIGRATIONS, max_size=10)
    client = aioredis.Redis.from_url(redis_url)
    store = RoutingStore(client, prefix)
    recorder = Recorder(pool, store)
    engine = Engine(pool, store, recorder, EngineConfig(first_reply_sla_seconds=0))

    async def close() -> None:
        await engine.close()
        await recorder.close()
        await pool.close()
        await client.aclose()

    return engine, close


async def core_worker(dsn: str, redis_url: str, prefix: str, tenant: str, ids: list[str]) -> float:
    """Route ``ids`` with 64 in flight; returns seconds."""
    engine, close = await _engine(dsn, redis_url, prefix)
    now = dt.datetime.now(dt.UTC)
    queue = list(ids)
    start = time.perf_counter()

    async def worker() -> None:
        while queue:
            cid = queue.pop()
            await engine.conversation_created(
                tenant, cid, team_id="", skills=(), priority=2, created=now, inbox_id="b"
            )

    await asyncio.gather(*(worker() for _ in range(64)))
    elapsed = time.perf_counter() - start
    await close()
    return elapsed


async def core(replicas: int, servers: Any) -> dict[str, Any]:
    dsn = await _new_db(servers.postgres_url)
    prefix = f"bench:{uuid7_str()[-8:]}:"
    tenant = uuid7_str()
    engine, close = await _engine(dsn, servers.redis_url, prefix)
    for i in range(AGENTS):
        await engine.upsert_agent(agent_row(tenant, f"agent-{i:04d}", capacity=10))
        await engine.set_status(tenant, f"agent-{i:04d}", 1)
    await close()
    ids = [uuid7_str() for _ in range(CONVERSATIONS)]
    cpu = _Cpu()
    start = time.perf_counter()
    if replicas == 1:
        await core_worker(dsn, servers.redis_url, prefix, tenant, ids)
    else:
        chunks = [ids[i::replicas] for i in range(replicas)]
        procs = []
        for chunk in chunks:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump([dsn, servers.redis_url, prefix, tenant, chunk], f)
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "core-worker", f.name
                )
            )
        for p in procs:
            await p.wait()
    elapsed = time.perf_counter() - start
    conn = await asyncpg.connect(dsn)
    assigned = await conn.fetchval("SELECT count(*) FROM conversations WHERE state = 'assigned'")
    transactions = await _record_transactions(conn)
    await conn.close()
    client = aioredis.Redis.from_url(servers.redis_url)
    await delete_prefix(client, prefix)
    await client.aclose()
    await _drop_db(servers.postgres_url, dsn)
    return {
        "replicas": replicas,
        "decisions": CONVERSATIONS,
        "assigned": assigned,
        "seconds": round(elapsed, 2),
        "decisions_per_s": round(CONVERSATIONS / elapsed),
        "record_transactions": transactions,
        # With 2 replicas the engines are child processes: only the machine numbers count.
        **cpu.report(CONVERSATIONS, "engine" if replicas == 1 else "parent"),
    }


async def raw_bus(servers: Any, n: int = CONVERSATIONS) -> dict[str, Any]:
    """Publish n persistent messages with confirms into a quorum queue while consuming them."""
    conn = await connect(servers.amqp_url, "bench")
    ch = await conn.channel(publisher_confirms=True)
    name = f"bench.raw.{uuid7_str()[-8:]}"
    q = await ch.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    body = b"x" * 120
    got = 0
    done = asyncio.Event()
    cch = await conn.channel()
    await cch.set_qos(prefetch_count=256)
    cq = await cch.get_queue(name)

    async def on(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal got
        await msg.ack()
        got += 1
        if got == n:
            done.set()

    await cq.consume(on)
    cpu = _Cpu()
    start = time.perf_counter()
    for i in range(0, n, 200):
        await asyncio.gather(
            *(
                ch.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=name,
                )
                for _ in range(min(200, n - i))
            )
        )
    await done.wait()
    elapsed = time.perf_counter() - start
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    return {
        "messages": n,
        "seconds": round(elapsed, 2),
        "msgs_per_s": round(n / elapsed),
        **{k.replace("decision", "message"): v for k, v in cpu.report(n).items()},
    }


async def end_to_end(servers: Any, tmp: Path) -> dict[str, Any]:
    """conversation.created published -> conversation.assigned received, through a real replica."""
    dsn = await _new_db(servers.postgres_url)
    prefix = f"bench:{uuid7_str()[-8:]}:"
    tag = uuid7_str()[-8:]
    exchange, qprefix = f"bench.{tag}.events", f"bench.{tag}."
    port, grpc_port = free_port(), free_port()
    proc = ServiceProcess(
        "livedesk.assignment",
        {
            "AMQP_URL": servers.amqp_url, "AMQP_EXCHANGE": exchange,
            "AMQP_QUEUE_PREFIX": qprefix, "DATABASE_URL": dsn, "DB_AUTO_CREATE": "false",
            "REDIS_URL": servers.redis_url, "REDIS_KEY_PREFIX": prefix, "PORT": str(port),
            "GRPC_PORT": str(grpc_port), "LOG_LEVEL": "WARNING",
            "PRESENCE_GRACE_SECONDS": "3600", "FIRST_REPLY_SLA_SECONDS": "0",
            **json.loads(os.environ.get("BENCH_SERVICE_ENV", "{}")),
        },
        tmp / "e2e.log",
        port,
    ).start()  # fmt: skip
    try:
        await proc.wait_ready(60)
        conn = await connect(servers.amqp_url, "bench")
        ch = await conn.channel()
        ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        sink = await ch.declare_queue(
            f"{qprefix}sink", durable=True, arguments={"x-queue-type": "quorum"}
        )
        # The sink takes what it measures, plus the agents' events of the setup so they are
        # routable as in production (unbound, the relay would retry them during the run).
        # SINK_KEYS=# restores the old sink, which also consumed every conversation.created
        # the generator published: twice the deliveries for broker and generator alike.
        for key in os.environ.get("SINK_KEYS", ",".join(SINK_KEYS)).split(","):
            await sink.bind(ex, key)
        await ch.set_qos(prefetch_count=512)
        latencies: list[float] = []
        sent_at: dict[str, float] = {}
        done = asyncio.Event()
        setup_events = 0

        async def on(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal setup_events
            await msg.ack()
            if msg.type == "conversation.assigned":
                env = decode(msg.body)
                latencies.append(time.perf_counter() - sent_at[env.conversation_id])
                if len(latencies) == CONVERSATIONS:
                    done.set()
            elif (msg.type or "").startswith("agent."):
                setup_events += 1

        await sink.consume(on)
        tenant = uuid7_str()
        engine, close = await _engine(dsn, servers.redis_url, prefix)
        for i in range(AGENTS):
            await engine.upsert_agent(agent_row(tenant, f"agent-{i:04d}", capacity=10))
            await engine.set_status(tenant, f"agent-{i:04d}", 1)
        await close()
        # Start from a quiet service: the setup's 2,000 agent events relayed and received.
        await wait_until(
            lambda: _true(setup_events >= 2 * AGENTS), timeout=120, what="setup events"
        )
        assert proc.proc is not None
        profiler = await _start_profiler(proc.proc.pid)
        cpu = _Cpu(proc.proc.pid)
        publisher = await EventPublisher.create(conn, exchange)
        start = time.perf_counter()
        ids = [uuid7_str() for _ in range(CONVERSATIONS)]
        for i in range(0, CONVERSATIONS, 200):
            envs = []
            for cid in ids[i : i + 200]:
                envs.append(
                    new_event(
                        ConversationCreated(inbox_id="web"),
                        tenant_id=tenant,
                        producer="bench",
                        conversation_id=cid,
                    )
                )
                sent_at[cid] = time.perf_counter()
            await publisher.publish_many(envs)
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - start
        cpu_report = cpu.report(CONVERSATIONS)
        await _stop_profiler(profiler)
        await publisher.close()
        db = await asyncpg.connect(dsn)
        transactions = await _record_transactions(db)
        await db.close()
        latencies.sort()
        result = {
            "decisions": CONVERSATIONS,
            "seconds": round(elapsed, 2),
            "decisions_per_s": round(CONVERSATIONS / elapsed),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
            "record_transactions": transactions,
            **cpu_report,
        }
        # Paced run: a steady rate well under the ceiling, to see latency when agents are free.
        latencies.clear()
        await _reset(dsn, servers.redis_url, prefix, tenant)
        done.clear()
        ids = [uuid7_str() for _ in range(2000)]
        for cid in ids:
            sent_at[cid] = time.perf_counter()
            await publisher_paced(conn, exchange, tenant, cid)
            await asyncio.sleep(0.002)
        await wait_until(lambda: _true(len(latencies) >= len(ids)), timeout=120, what="paced run")
        latencies.sort()
        result["paced_rate_per_s"] = round(len(ids) / (time.perf_counter() - sent_at[ids[0]]))
        result["paced_p50_ms"] = round(statistics.median(latencies) * 1000, 1)
        result["paced_p99_ms"] = round(latencies[int(len(latencies) * 0.99)] * 1000, 1)
        # The replica first: alive, it would declare its queues again once they are gone.
        proc.stop_quietly()
        for base in ("assignment", "sink"):
            name = f"{qprefix}{base}"
            for q in (name, f"{name}.dlq", *(f"{name}.retry.{i}" for i in range(3))):
                await ch.queue_delete(q)
        await ch.exchange_delete(exchange)
        await conn.close()
        return result
    finally:
        proc.stop_quietly()
        client = aioredis.Redis.from_url(servers.redis_url)
        await delete_prefix(client, prefix)
        await client.aclose()
        await _drop_db(servers.postgres_url, dsn)


async def _start_profiler(pid: int) -> asyncio.subprocess.Process | None:
    """With BENCH_PROFILE=<file>: py-spy samples the replica during the burst (raw stacks).

    BENCH_PROFILE_ARGS adds py-spy options (e.g. ``--gil``).
    """
    out = os.environ.get("BENCH_PROFILE")
    if not out:
        return None
    extra = os.environ.get("BENCH_PROFILE_ARGS", "").split()
    profiler = await asyncio.create_subprocess_exec(
        "uvx", "py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
        "--nonblocking", *extra, "-o", out, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(2)  # py-spy attached (uvx resolves it first)
    return profiler


async def _stop_profiler(profiler: asyncio.subprocess.Process | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        await profiler.wait()


_paced_publisher: EventPublisher | None = None
_in_flight: set[asyncio.Future[None]] = set()


async def _true(value: bool) -> bool:
    return value


async def publisher_paced(conn: Any, exchange: str, tenant: str, cid: str) -> None:
    global _paced_publisher
    if _paced_publisher is None:
        _paced_publisher = await EventPublisher.create(conn, exchange)
    task = asyncio.ensure_future(
        _paced_publisher.publish(
            new_event(ConversationCreated(inbox_id="web"), tenant_id=tenant, producer="bench",
                      conversation_id=cid)
        )
    )  # fmt: skip
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)


async def _reset(dsn: str, redis_url: str, prefix: str, tenant: str) -> None:
    """Resolve every conversation so all agents are free again."""
    engine, close = await _engine(dsn, redis_url, prefix)
    rows = await engine.pool.fetch(
        "SELECT conversation_id FROM conversations WHERE state = 'assigned'"
    )
    sem = asyncio.Semaphore(64)

    async def one(cid: str) -> None:
        async with sem:
            await engine.conversation_resolved(tenant, cid)

    await asyncio.gather(*(one(r["conversation_id"]) for r in rows))
    await close()


async def main(argv: list[str]) -> None:
    if argv[:1] == ["core-worker"]:
        text = await asyncio.to_thread(Path(argv[1]).read_text)
        dsn, redis_url, prefix, tenant, ids = json.loads(text)
        await core_worker(dsn, redis_url, prefix, tenant, ids)
        return
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        servers = find_servers(stack)
        what = argv[0] if argv else "all"
        out: dict[str, Any] = {}
        if what in ("all", "core"):
            for n in [int(argv[1])] if len(argv) > 1 else [1, 2]:
                out[f"core_{n}_replica"] = await core(n, servers)
                print(json.dumps(out[f"core_{n}_replica"]), flush=True)
        if what in ("all", "bus"):
            out["raw_bus"] = await raw_bus(servers)
            print(json.dumps(out["raw_bus"]), flush=True)
            out["end_to_end"] = await end_to_end(servers, Path(tmp))
            print(json.dumps(out["end_to_end"]), flush=True)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1:]))
