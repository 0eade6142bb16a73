"""Concurrency proof: four engine processes race over thousands of conversations.

Real replicas (``python -m livedesk.assignment``) share one PostgreSQL database,
one Redis (a private redis-server, flushed mid-run) and one RabbitMQ queue.
Conversations arrive over the bus while agents flip status through gRPC on
random replicas and some conversations are resolved. Afterwards, from
PostgreSQL and Redis both: no conversation bound to two agents, no agent above
capacity (also sampled in Redis throughout the run), every conversation
assigned or queued, and no waiting conversation that a free agent could take.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from livedesk.assignment_client import AssignmentClient
from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.events.v1.conversation_pb2 import (
    ConversationCreated,
    ConversationResolved,
)
from livedesk.platform.bus import EventPublisher, connect, new_event
from livedesk.platform.ids import uuid7_str
from livedesk.platform.testing import ServiceProcess, free_port, wait_until
from livedesk.platform.testing.pytest_plugin import BusNames

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),  # 4 replicas on 2 shared cores: minutes when the machine is busy
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

REPLICAS = 4
AGENTS = 200
CONVERSATIONS = 4000
SKILLS = ("billing", "es", "tech")
TEAMS = ("sales", "support")
ONLINE, AWAY, OFFLINE = 1, 2, 3


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test alone (it is flushed on purpose), stopped afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path, dsn: str, redis_url: str, bus: BusNames, n: int
) -> AsyncIterator[list[tuple[ServiceProcess, int]]]:
    procs: list[tuple[ServiceProcess, int]] = []
    try:
        for i in range(n):
            port, grpc_port = free_port(), free_port()
            env = {
                **bus.env(),
                "DATABASE_URL": dsn,
                "DB_AUTO_CREATE": "false",
                "REDIS_URL": redis_url,
                "PORT": str(port),
                "GRPC_PORT": str(grpc_port),
                "LIVEDESK_ENV": "test",
                "LOG_LEVEL": "WARNING",
                "PRESENCE_GRACE_SECONDS": "3600",
                "FIRST_REPLY_SLA_SECONDS": "0",
                "SWEEP_INTERVAL": "0.5",
                "AMQP_RETRY_DELAYS_MS": "[100,200,400,800,1600]",
                "CONSUMER_CONCURRENCY": "32",
            }
            proc = ServiceProcess("livedesk.assignment", env, tmp_path / f"r{i}.log", port)
            procs.append((proc.start(), grpc_port))
        for proc, _ in procs:
            await proc.wait_ready(60)
        yield procs
    finally:
        for proc, _ in procs:
            proc.stop_quietly()


async def sink(bus: BusNames) -> None:
    """A queue bound to every event, so what the engines publish is routable."""
    conn = await aio_pika.connect(bus.amqp_url)
    try:
        ch = await conn.channel()
        ex = await ch.declare_exchange(bus.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await ch.declare_queue(bus.queue("sink"), durable=True)
        await q.bind(ex, "#")
    finally:
        await conn.close()


async def sample_capacity(
    client: aioredis.Redis, tenant: str, agents: list[str], violations: list[str]
) -> None:
    """Every agent's load within its capacity and equal to its bound conversations."""
    while True:
        async with client.pipeline(transaction=True) as pipe:  # one atomic snapshot
            _ = pipe.get(_key(tenant, "gen"))
            for a in agents:
                _ = pipe.hmget(_key(tenant, f"a:{a}"), "cap", "load")
                _ = pipe.scard(_key(tenant, f"ac:{a}"))
            live, *values = await pipe.execute()
        if live is None:  # lost or being rebuilt: no script runs on it
            await asyncio.sleep(0.01)
            continue
        for a, (cap, load), bound in zip(agents, values[::2], values[1::2], strict=True):
            if cap is None or load is None:
                continue
            if int(load) > int(cap) or int(load) != bound:
                violations.append(f"{a}: load {load} cap {cap} bound {bound}")
        await asyncio.sleep(0.1)


async def test_replicas_never_double_assign_or_overfill(
    tmp_path: Path, bus_names: BusNames, pg_database: str, own_redis: str
) -> None:
    rng = random.Random(7)
    tenant = uuid7_str()
    await sink(bus_names)
    # The first replica creates the schema; the others find it.
    async with replicas(tmp_path, pg_database, own_redis, bus_names, REPLICAS) as procs:
        clients = [AssignmentClient(f"127.0.0.1:{p}", timeout=10) for _, p in procs]
        redis_client = aioredis.Redis.from_url(own_redis)
        violations: list[str] = []
        agents = [f"agent-{i:03d}" for i in range(AGENTS)]
        sampler = asyncio.create_task(sample_capacity(redis_client, tenant, agents, violations))
        amqp = await connect(bus_names.amqp_url, "test")
        publisher = await EventPublisher.create(amqp, bus_names.exchange)
        try:
            capacity = {a: rng.randint(1, 4) for a in agents}
            for a in agents:
                profile = pb.AgentProfile(
                    tenant_id=tenant,
                    agent_id=a,
                    capacity=capacity[a],
                    skills=rng.sample(SKILLS, rng.randint(0, 2)),
                    team_ids=rng.sample(TEAMS, rng.randint(0, 1)),
                )
                await rng.choice(clients).upsert_agent_profile(profile)
            await asyncio.gather(
                *(
                    rng.choice(clients).set_agent_status(
                        tenant, a, ONLINE if rng.random() < 0.7 else OFFLINE
                    )
                    for a in agents
                )
            )

            conversations = [uuid7_str() for _ in range(CONVERSATIONS)]
            resolved: set[str] = set()

            async def flip_statuses(stop: asyncio.Event) -> int:
                flips = 0
                while not stop.is_set():
                    agent = rng.choice(agents)
                    status = rng.choice((ONLINE, ONLINE, AWAY, OFFLINE))
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await rng.choice(clients).set_agent_status(tenant, agent, status)
                        flips += 1
                    await asyncio.sleep(0.005)
                return flips

            stop = asyncio.Event()
            flippers = [asyncio.create_task(flip_statuses(stop)) for _ in range(4)]
            for n, start in enumerate(range(0, CONVERSATIONS, 250)):
                batch = []
                for cid in conversations[start : start + 250]:
                    created = ConversationCreated(
                        inbox_id="web",
                        priority=rng.choice((1, 2, 2, 3, 4)),  # type: ignore[arg-type]
                        required_skills=rng.sample(SKILLS, rng.choice((0, 0, 0, 1))),
                        team_id=rng.choice(("", "", "", *TEAMS)),
                    )
                    batch.append(
                        new_event(created, tenant_id=tenant, producer="test", conversation_id=cid)
                    )
                # Resolve some earlier conversations: capacity frees, the queue drains.
                for cid in rng.sample(conversations[:start], min(start, 60)):
                    if cid not in resolved:
                        resolved.add(cid)
                        batch.append(
                            new_event(
                                ConversationResolved(resolved_by="x"),
                                tenant_id=tenant,
                                producer="test",
                                conversation_id=cid,
                            )
                        )
                await publisher.publish_many(batch)
                if n == 4:
                    await redis_client.flushall()  # Redis loses everything mid-run
                else:
                    # Let the engines work through it while statuses keep flipping.
                    await wait_until(
                        lambda: _queue_empty(bus_names),
                        timeout=60,
                        interval=0.2,
                        what="batch consumed",
                    )
            await wait_until(
                lambda: _queue_empty(bus_names), timeout=60, interval=0.2, what="all consumed"
            )
            stop.set()
            flips = sum(await asyncio.gather(*flippers))
            assert flips > 100

            # Quiescence: every event handled, PostgreSQL and Redis agree.
            pool = await asyncpg.create_pool(pg_database, min_size=1, max_size=2)
            assert pool is not None
            try:

                async def settled() -> bool:
                    consumed = await _queue_empty(bus_names)
                    known = await pool.fetchval(
                        "SELECT count(*) FROM conversations WHERE tenant_id = $1", tenant
                    )
                    if not consumed or known < CONVERSATIONS:
                        return False
                    return not await _disagreements(pool, redis_client, tenant)

                await wait_until(settled, timeout=60, interval=0.5, what="engines settled")
                await _check_invariants(pool, redis_client, tenant, conversations, resolved)
                # The flush was noticed and the state rebuilt from PostgreSQL.
                gen = await pool.fetchval(
                    "SELECT gen FROM redis_generations WHERE tenant_id = $1", tenant
                )
                assert gen >= 2
            finally:
                await pool.close()
            assert not violations, violations[:10]
            for proc, _ in procs:
                assert proc.proc is not None
                assert proc.proc.poll() is None, proc.output()[-3000:]
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await publisher.close()
            await amqp.close()
            for c in clients:
                await c.close()
            await redis_client.aclose()


async def _queue_empty(bus: BusNames) -> bool:
    conn = await aio_pika.connect(bus.amqp_url)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(bus.queue("assignment"), passive=True)
        retry = [
            await ch.declare_queue(f"{bus.queue('assignment')}.retry.{i}", passive=True)
            for i in range(5)
        ]
        counts = [q.declaration_result.message_count] + [
            r.declaration_result.message_count for r in retry
        ]
        return sum(c or 0 for c in counts) == 0
    finally:
        await conn.close()


def _key(tenant: str, name: str) -> str:
    return f"livedesk:assignment:{{{tenant}}}:{name}"


async def _disagreements(pool: asyncpg.Pool, client: aioredis.Redis, tenant: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT conversation_id, state, agent_id, version FROM conversations WHERE tenant_id = $1",
        tenant,
    )
    async with client.pipeline(transaction=False) as pipe:
        for r in rows:
            _ = pipe.hmget(_key(tenant, f"c:{r['conversation_id']}"), "s", "ag", "ep")
        states = await pipe.execute()
    codes = {"waiting": b"w", "assigned": b"a", "resolved": b"r", "unassigned": b"u"}
    out = []
    for r, (s, ag, ep) in zip(rows, states, strict=True):
        if s != codes[r["state"]] or (ag or b"").decode() != (r["agent_id"] or ""):
            out.append(f"{r['conversation_id']}: pg {r['state']}/{r['agent_id']} redis {s}/{ag}")
        elif ep is not None and int(ep) != r["version"]:
            out.append(f"{r['conversation_id']}: version {r['version']} vs {ep}")
    agents = await pool.fetch("SELECT agent_id, version FROM agents WHERE tenant_id = $1", tenant)
    async with client.pipeline(transaction=False) as pipe:
        for a in agents:
            _ = pipe.hget(_key(tenant, f"a:{a['agent_id']}"), "v")
        versions = await pipe.execute()
    for a, v in zip(agents, versions, strict=True):
        if v is None or int(v) != a["version"]:
            out.append(f"agent {a['agent_id']}: version {a['version']} vs {v}")
    return out


async def _check_invariants(
    pool: asyncpg.Pool,
    client: aioredis.Redis,
    tenant: str,
    conversations: list[str],
    resolved: set[str],
) -> None:
    rows = {
        r["conversation_id"]: r
        for r in await pool.fetch("SELECT * FROM conversations WHERE tenant_id = $1", tenant)
    }
    # Every conversation assigned or queued (or resolved, when we resolved it).
    for cid in conversations:
        state = rows[cid]["state"]
        assert state in ("assigned", "waiting") or (state == "resolved" and cid in resolved), (
            cid,
            state,
        )
    agents = {r["agent_id"]: r for r in await pool.fetch("SELECT * FROM agents")}
    # No agent above capacity, in PostgreSQL and Redis; Redis bindings match PostgreSQL.
    load: dict[str, int] = {}
    for r in rows.values():
        if r["state"] == "assigned":
            load[r["agent_id"]] = load.get(r["agent_id"], 0) + 1
    seen: dict[str, str] = {}
    for aid, agent in agents.items():
        assert load.get(aid, 0) <= agent["capacity"], (aid, load.get(aid), agent["capacity"])
        bound = {_text(m) for m in await client.smembers(_key(tenant, f"ac:{aid}"))}
        hload = await client.hget(_key(tenant, f"a:{aid}"), "load")
        assert int(hload or 0) == len(bound) == load.get(aid, 0), aid
        for cid in bound:
            # No conversation bound to two agents.
            assert cid not in seen, (cid, seen.get(cid), aid)
            seen[cid] = aid
            assert rows[cid]["agent_id"] == aid
        if agent["status"] == OFFLINE:
            assert not bound, f"offline agent {aid} keeps {bound}"
    # Queue order: no waiting conversation fits an online agent with room.
    for r in rows.values():
        if r["state"] != "waiting":
            continue
        for aid, agent in agents.items():
            fits = (
                agent["status"] == ONLINE
                and load.get(aid, 0) < agent["capacity"]
                and set(r["required_skills"]) <= set(agent["skills"])
                and (not r["team_id"] or r["team_id"] in agent["team_ids"])
                and aid != r["excluded_agent"]
            )
            assert not fits, f"{r['conversation_id']} waits while {aid} could take it"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
