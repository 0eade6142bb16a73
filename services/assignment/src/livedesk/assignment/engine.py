"""The routing engine of one replica: decisions in Redis, truth in PostgreSQL.

Every operation runs the routing script for one tenant (:mod:`.store`), then
records what it changed (:mod:`.recorder`). When the tenant's Redis state is
missing the engine rebuilds it from PostgreSQL first; when the record is
refused as stale (Redis was rebuilt meanwhile) the operation is redone on the
rebuilt state. Replicas coordinate through nothing but Redis (the script,
and a lock for rebuilds) and PostgreSQL (row versions and advisory locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from livedesk.assignment.coalesce import Coalescer
from livedesk.assignment.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from livedesk.assignment.recorder import LOCK_CLASS, PRODUCER, Recorder
from livedesk.assignment.shifts import Shift, ShiftException, on_shift
from livedesk.assignment.store import (
    AgentRouting,
    Change,
    NoState,
    RestoredConversation,
    RoutingStore,
    ScriptResult,
    now_ms,
    skills_arg,
)
from livedesk.contracts.events.v1.agent_pb2 import AgentProfileChanged, AgentStatusChanged
from livedesk.contracts.events.v1.common_pb2 import (
    ActorKind,
    AgentStatus,
    Priority,
    QueueReason,
    Weekday,
)
from livedesk.contracts.events.v1.common_pb2 import Shift as PbShift
from livedesk.contracts.events.v1.common_pb2 import (
    ShiftException as PbShiftException,
)
from livedesk.contracts.events.v1.conversation_pb2 import (
    AssignedBy,
    ConversationQueued,
    ConversationTransferred,
)
from livedesk.platform.bus import Envelope, new_event
from livedesk.platform.bus.outbox import Outbox
from livedesk.platform.logging import get_logger
from livedesk.platform.postgres import Connection

__all__ = ["AgentRow", "Engine", "EngineConfig"]

log = get_logger("livedesk.assignment.engine")

ONLINE, AWAY, OFFLINE = (
    AgentStatus.AGENT_STATUS_ONLINE,
    AgentStatus.AGENT_STATUS_AWAY,
    AgentStatus.AGENT_STATUS_OFFLINE,
)
_PRECONDITIONS = {
    "RESOLVED": "the conversation is resolved",
    "OFFLINE": "the agent is offline",
    "AWAY": "the agent is away (use force to override)",
    "OFF_SHIFT": "the agent is off shift (use force to override)",
    "FULL": "the agent is at capacity (use force to override)",
    "SAME_TARGET": "the target agent already has the conversation",
}


@dataclass(frozen=True)
class EngineConfig:
    """Tunables of the engine (from the settings)."""

    presence_grace_seconds: float = 15.0
    first_reply_sla_seconds: float = 120.0
    rebuild_wait_seconds: float = 30.0
    #: New conversations of one tenant routed by one script call at most.
    route_batch_size: int = 200
    #: Route script calls (with their records) of one tenant in flight at once; arrivals
    #: meanwhile wait and go together in the next call.
    route_batches_in_flight: int = 2


@dataclass(frozen=True)
class AgentRow:
    """An agent as stored in PostgreSQL."""

    tenant_id: str
    agent_id: str
    display_name: str
    status: int
    capacity: int
    skills: tuple[str, ...]
    team_ids: tuple[str, ...]
    time_zone: str
    shifts: tuple[Shift, ...]
    exceptions: tuple[ShiftException, ...]
    priority_weight: int
    version: int
    auto_away: bool = False

    @classmethod
    def of(cls, r: asyncpg.Record) -> AgentRow:
        """From an ``agents`` row."""
        shifts = tuple(Shift(s["weekday"], s["start"], s["end"]) for s in json.loads(r["shifts"]))
        exceptions = tuple(
            ShiftException(
                dt.date.fromisoformat(e["date"]), e["day_off"], e.get("start", 0), e.get("end", 0)
            )
            for e in json.loads(r["shift_exceptions"])
        )
        return cls(
            tenant_id=r["tenant_id"],
            agent_id=r["agent_id"],
            display_name=r["display_name"],
            status=r["status"],
            capacity=r["capacity"],
            skills=tuple(r["skills"]),
            team_ids=tuple(r["team_ids"]),
            time_zone=r["time_zone"],
            shifts=shifts,
            exceptions=exceptions,
            priority_weight=r["priority_weight"],
            version=r["version"],
            auto_away=r["auto_away"],
        )

    def on_shift(self, now: dt.datetime | None = None) -> bool:
        """Whether the agent is inside its working hours now."""
        return on_shift(
            now or dt.datetime.now(dt.UTC), self.time_zone, self.shifts, self.exceptions
        )

    def routing(self, last_assigned_ms: int = 0) -> AgentRouting:
        """What the routing script needs of this agent."""
        return AgentRouting(
            agent_id=self.agent_id,
            version=self.version,
            status=self.status,
            capacity=self.capacity,
            weight=self.priority_weight,
            skills=self.skills,
            team_ids=self.team_ids,
            on_shift=self.on_shift(),
            last_assigned_ms=last_assigned_ms,
        )

    def profile_event(self) -> AgentProfileChanged:
        """The ``agent.profile_changed`` payload of this profile."""
        return AgentProfileChanged(
            agent_id=self.agent_id,
            display_name=self.display_name,
            capacity=self.capacity,
            skills=self.skills,
            team_ids=self.team_ids,
            time_zone=self.time_zone,
            shifts=[
                PbShift(
                    weekday=Weekday.ValueType(s.weekday), start_minute=s.start, end_minute=s.end
                )
                for s in self.shifts
            ],
            priority_weight=self.priority_weight,
            shift_exceptions=[
                PbShiftException(
                    date=e.date.isoformat(),
                    day_off=e.day_off,
                    start_minute=e.start,
                    end_minute=e.end,
                )
                for e in self.exceptions
            ],
        )


def _profile_key(a: AgentRow) -> tuple[Any, ...]:
    return (
        a.display_name, a.capacity, a.skills, a.team_ids, a.time_zone, a.shifts, a.exceptions,
        a.priority_weight,
    )  # fmt: skip


Events = Callable[[ScriptResult], Sequence[Envelope]]


class Engine:
    """One replica's routing engine."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: RoutingStore,
        recorder: Recorder,
        config: EngineConfig | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.recorder = recorder
        self.config = config or EngineConfig()
        self._draining: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._agent_cache: dict[tuple[str, str], AgentRow] = {}
        self._routes: Coalescer[list[str | int], ScriptResult] = Coalescer(
            self._route_batch,
            max_batch=self.config.route_batch_size,
            max_in_flight=self.config.route_batches_in_flight,
        )

    async def close(self) -> None:
        """Cancel background drains and batches."""
        await self._routes.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- the core loop -------------------------------------------------------------------

    async def run(
        self, tenant_id: str, op: str, *args: str | int, events: Events | None = None
    ) -> ScriptResult:
        """Run ``op`` and make its changes durable, rebuilding or redoing as needed."""
        for _ in range(10):
            try:
                res = await self.store.call(tenant_id, op, *args)
            except NoState:
                await self.rebuild(tenant_id)
                continue
            extra = events(res) if events is not None else ()
            if await self.recorder.record(tenant_id, res.gen, res.changes, extra):
                if res.more:
                    self._drain_later(tenant_id)
                return res
            log.info("record_stale_redo", tenant_id=tenant_id, op=op)
        raise Unavailable("routing state kept changing under the operation; retry")

    def _drain_later(self, tenant_id: str) -> None:
        if tenant_id in self._draining:
            return
        self._draining.add(tenant_id)

        async def go() -> None:
            try:
                while (await self.run(tenant_id, "drain")).more:
                    pass
            except Exception:
                log.warning("drain_failed", tenant_id=tenant_id, exc_info=True)
            finally:
                self._draining.discard(tenant_id)

        task = asyncio.create_task(go(), name=f"drain:{tenant_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, tenant_id: str) -> list[Change]:
        """Assign every waiting conversation that fits an available agent now."""
        changes: list[Change] = []
        while True:
            res = await self.run(tenant_id, "drain")
            changes += res.changes
            if not res.more:
                return changes

    # -- rebuild -------------------------------------------------------------------------

    async def rebuild(self, tenant_id: str) -> bool:
        """Rebuild the tenant's Redis state from PostgreSQL unless live; True if it did."""
        redis = self.store.redis
        lock = f"{self.store.prefix}rebuild:{{{tenant_id}}}"
        token = uuid.uuid4().hex
        deadline = asyncio.get_running_loop().time() + self.config.rebuild_wait_seconds
        while not await redis.set(lock, token, nx=True, px=60_000):
            if await redis.exists(self.store.gen_key(tenant_id)):
                return False
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"routing state of tenant {tenant_id} is being rebuilt")
            await asyncio.sleep(0.05)
        try:
            if await redis.exists(self.store.gen_key(tenant_id)):
                return False
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, tenant_id
                )
                live = await redis.get(self.store.gen_key(tenant_id))
                current = await conn.fetchval(
                    "SELECT gen FROM redis_generations WHERE tenant_id = $1", tenant_id
                )
                if live is not None and current is not None and int(live) == current:
                    return False  # rebuilt by another replica meanwhile
                gen: int = await conn.fetchval(
                    """INSERT INTO redis_generations (tenant_id, gen) VALUES ($1, 1)
                       ON CONFLICT (tenant_id) DO UPDATE SET gen = redis_generations.gen + 1
                       RETURNING gen""",
                    tenant_id,
                )
                agents, conversations = await self._load_tenant(conn, tenant_id)
                res = await self.store.restore(tenant_id, gen, agents, conversations)
            log.info(
                "routing_state_rebuilt",
                tenant_id=tenant_id,
                gen=gen,
                agents=len(agents),
                conversations=len(conversations),
            )
        finally:
            with contextlib.suppress(Exception):
                if await redis.get(lock) == token.encode():
                    await redis.delete(lock)
        # Committed: the drain made by "finish" is recorded under the new generation.
        if await self.recorder.record(tenant_id, res.gen, res.changes) and res.more:
            self._drain_later(tenant_id)
        return True

    async def _load_tenant(
        self, conn: Connection, tenant_id: str
    ) -> tuple[list[AgentRouting], list[RestoredConversation]]:
        last = {
            r["agent_id"]: int(r["last"].timestamp() * 1000)
            for r in await conn.fetch(
                """SELECT agent_id, max(assigned_at) AS last FROM assignments
                   WHERE tenant_id = $1 GROUP BY agent_id""",
                tenant_id,
            )
        }
        agents = [
            AgentRow.of(r).routing(last.get(r["agent_id"], 0))
            for r in await conn.fetch("SELECT * FROM agents WHERE tenant_id = $1", tenant_id)
        ]
        rows = await conn.fetch(
            """SELECT * FROM conversations WHERE tenant_id = $1
               AND (state IN ('waiting', 'assigned', 'unassigned')
                    OR (state = 'resolved' AND updated_at > now() - interval '1 day'))""",
            tenant_id,
        )

        def ms(t: dt.datetime | None) -> int:
            return int(t.timestamp() * 1000) if t is not None else 0

        conversations = [
            RestoredConversation(
                conversation_id=r["conversation_id"],
                state=r["state"],
                epoch=r["version"],
                agent_id=r["agent_id"] or "",
                team_id=r["team_id"],
                skills=r["required_skills"],
                priority=r["priority"],
                queued_ms=ms(r["queued_at"]),
                created_ms=ms(r["created_at"]),
                inbox_id=r["inbox_id"],
                reason=r["queue_reason"],
                excluded_agent=r["excluded_agent"],
                assigned_by=1,
                assigned_ms=ms(r["assigned_at"]),
            )
            for r in rows
        ]
        return agents, conversations

    async def ensure_live(self, tenant_ids: Sequence[str]) -> int:
        """Rebuild every tenant whose Redis state is gone; how many were rebuilt."""
        if not tenant_ids:
            return 0
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for t in tenant_ids:
                _ = pipe.exists(self.store.gen_key(t))
            present = await pipe.execute()
        rebuilt = 0
        for tenant_id, ok in zip(tenant_ids, present, strict=True):
            if not ok and await self.rebuild(tenant_id):
                rebuilt += 1
        return rebuilt

    # -- conversations -------------------------------------------------------------------

    async def conversation_created(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        team_id: str,
        skills: Sequence[str],
        priority: int,
        created: dt.datetime,
        inbox_id: str,
    ) -> ScriptResult:
        """Route a new conversation: assigned, or queued (idempotent per conversation)."""
        created_ms = int(created.timestamp() * 1000)
        args: list[str | int] = [
            conversation_id,
            team_id,
            skills_arg(skills),
            _priority(priority),
            now_ms(),
            created_ms,
            inbox_id,
            QueueReason.QUEUE_REASON_NO_AGENT_AVAILABLE,
            "",
        ]
        return await self._routes.submit(tenant_id, args)

    async def _route_batch(self, tenant_id: str, batch: Sequence[list[str | int]]) -> ScriptResult:
        """Route many new conversations of a tenant in one script call, in arrival order.

        The script routes them one after the other exactly as separate calls
        would (same claims, same queue order), so batching changes nothing but
        the number of round trips; the result holds the changes of all of them.
        """
        return await self.run(tenant_id, "route", *(a for args in batch for a in args))

    async def conversation_resolved(self, tenant_id: str, conversation_id: str) -> ScriptResult:
        """Free the agent's capacity; the conversation leaves routing."""
        return await self.run(tenant_id, "resolve", conversation_id)

    async def conversation_reopened(
        self,
        tenant_id: str,
        conversation_id: str,
    ) -> ScriptResult:
        """Route a reopened conversation again."""
        return await self.run(tenant_id, "reopen", conversation_id, "", "", 2, now_ms(), "")

    async def first_reply(
        self, tenant_id: str, conversation_id: str, agent_id: str, at: dt.datetime
    ) -> None:
        """Record the assigned agent's first reply (stops the SLA clock)."""
        await self.pool.execute(
            """UPDATE conversations SET first_reply_at = $4
               WHERE tenant_id = $1 AND conversation_id = $2 AND state = 'assigned'
                 AND agent_id = $3 AND first_reply_at IS NULL""",
            tenant_id,
            conversation_id,
            agent_id,
            at,
        )

    async def assign(
        self,
        tenant_id: str,
        conversation_id: str,
        agent_id: str,
        *,
        force: bool,
        actor_id: str,
    ) -> Change:
        """Manual assignment through the claim path."""
        res = await self.run(
            tenant_id,
            "assign",
            conversation_id,
            agent_id,
            int(force),
            AssignedBy.ASSIGNED_BY_MANUAL,
            actor_id,
            0,
        )
        _raise_for(res, conversation_id, agent_id)
        return _change_of(res, conversation_id)

    async def transfer_to_agent(
        self,
        tenant_id: str,
        conversation_id: str,
        agent_id: str,
        *,
        force: bool,
        reason: str,
        actor_id: str,
        publish_transfer: bool = True,
    ) -> Change:
        """Move a conversation to a named agent (the same claim as routing)."""

        def events(res: ScriptResult) -> list[Envelope]:
            if res.code != "OK" or not publish_transfer:
                return []
            return [
                _transferred(
                    tenant_id, conversation_id, res.extra[0], agent_id, "", reason, actor_id
                )
            ]

        res = await self.run(
            tenant_id,
            "assign",
            conversation_id,
            agent_id,
            int(force),
            AssignedBy.ASSIGNED_BY_TRANSFER,
            actor_id,
            1,
            events=events,
        )
        _raise_for(res, conversation_id, agent_id)
        return _change_of(res, conversation_id)

    async def transfer_to_team(
        self,
        tenant_id: str,
        conversation_id: str,
        team_id: str,
        *,
        reason: str,
        actor_id: str,
        publish_transfer: bool = True,
    ) -> Change:
        """Put a conversation in a team's queue, excluding its current agent."""
        if team_id and not await self.pool.fetchval(
            "SELECT true FROM agents WHERE tenant_id = $1 AND $2 = ANY(team_ids) LIMIT 1",
            tenant_id,
            team_id,
        ):
            raise NotFound(f"team {team_id!r} not found")

        def events(res: ScriptResult) -> list[Envelope]:
            if res.code != "OK" or not publish_transfer:
                return []
            return [
                _transferred(
                    tenant_id, conversation_id, res.extra[0], "", team_id, reason, actor_id
                )
            ]

        res = await self.run(
            tenant_id, "to_team", conversation_id, team_id, actor_id, events=events
        )
        _raise_for(res, conversation_id, "")
        return _change_of(res, conversation_id)

    async def release(
        self, tenant_id: str, conversation_id: str, *, requeue: bool, actor_id: str
    ) -> tuple[str, Change | None]:
        """Take a conversation from its agent; (released agent, its change)."""
        res = await self.run(tenant_id, "release", conversation_id, int(requeue), actor_id)
        _raise_for(res, conversation_id, "")
        mine = [c for c in res.changes if c.conversation_id == conversation_id]
        return res.extra[0], (mine[0] if mine else None)

    async def requeue(
        self, tenant_id: str, conversation_id: str, from_agent: str, reason: int, epoch: int
    ) -> bool:
        """Requeue a conversation its agent failed (offline, SLA), excluding that agent."""
        res = await self.run(tenant_id, "requeue", conversation_id, from_agent, reason, 1, epoch)
        return res.code == "OK"

    # -- agents --------------------------------------------------------------------------

    async def get_agent(self, tenant_id: str, agent_id: str) -> AgentRow:
        """One agent's profile; NotFound."""
        row = await self.pool.fetchrow(
            "SELECT * FROM agents WHERE tenant_id = $1 AND agent_id = $2", tenant_id, agent_id
        )
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found")
        return AgentRow.of(row)

    async def upsert_agent(self, profile: AgentRow) -> tuple[AgentRow, bool]:
        """Create or replace a routing profile (status untouched); (stored, created)."""
        async with self.pool.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(
                "SELECT * FROM agents WHERE tenant_id = $1 AND agent_id = $2 FOR UPDATE",
                profile.tenant_id,
                profile.agent_id,
            )
            shifts = json.dumps(
                [{"weekday": s.weekday, "start": s.start, "end": s.end} for s in profile.shifts]
            )
            exceptions = json.dumps(
                [
                    {"date": e.date.isoformat(), "day_off": e.day_off, "start": e.start,
                     "end": e.end}
                    for e in profile.exceptions
                ]
            )  # fmt: skip
            if old is not None and _profile_key(AgentRow.of(old)) == _profile_key(profile):
                stored = AgentRow.of(old)
                changed = False
            else:
                row = await conn.fetchrow(
                    """INSERT INTO agents (tenant_id, agent_id, display_name, capacity, skills,
                           team_ids, time_zone, shifts, shift_exceptions, priority_weight)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10)
                       ON CONFLICT (tenant_id, agent_id) DO UPDATE SET
                           display_name = EXCLUDED.display_name, capacity = EXCLUDED.capacity,
                           skills = EXCLUDED.skills, team_ids = EXCLUDED.team_ids,
                           time_zone = EXCLUDED.time_zone, shifts = EXCLUDED.shifts,
                           shift_exceptions = EXCLUDED.shift_exceptions,
                           priority_weight = EXCLUDED.priority_weight,
                           version = agents.version + 1, updated_at = now()
                       RETURNING *""",
                    profile.tenant_id,
                    profile.agent_id,
                    profile.display_name,
                    profile.capacity,
                    list(profile.skills),
                    list(profile.team_ids),
                    profile.time_zone,
                    shifts,
                    exceptions,
                    profile.priority_weight,
                )
                assert row is not None
                stored = AgentRow.of(row)
                changed = True
                await Outbox.add(
                    conn,
                    [
                        new_event(
                            stored.profile_event(),
                            tenant_id=stored.tenant_id,
                            producer=PRODUCER,
                        )
                    ],
                )
        await self.push_agent(stored)
        return stored, old is None and changed

    async def set_status(
        self, tenant_id: str, agent_id: str, status: int
    ) -> tuple[int, int, list[str]]:
        """Set an agent's status; (status, previous, requeued conversation ids)."""
        async with self.pool.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(
                "SELECT status FROM agents WHERE tenant_id = $1 AND agent_id = $2 FOR UPDATE",
                tenant_id,
                agent_id,
            )
            if old is None:
                raise NotFound(f"agent {agent_id!r} not found")
            previous: int = old["status"]
            if previous != status:
                row = await conn.fetchrow(
                    """UPDATE agents SET status = $3, auto_away = false, version = version + 1,
                           status_changed_at = now(), updated_at = now()
                       WHERE tenant_id = $1 AND agent_id = $2 RETURNING *""",
                    tenant_id,
                    agent_id,
                    status,
                )
                await Outbox.add(conn, [_status_event(tenant_id, agent_id, status, previous)])
            else:
                row = await conn.fetchrow(
                    "SELECT * FROM agents WHERE tenant_id = $1 AND agent_id = $2",
                    tenant_id,
                    agent_id,
                )
        assert row is not None
        res = await self.push_agent(AgentRow.of(row))
        return status, previous, (res.extra if res is not None else [])

    async def push_agent(self, agent: AgentRow) -> ScriptResult | None:
        """Bring Redis up to this PostgreSQL version of the agent (requeue, drain)."""
        res = await self.run(agent.tenant_id, "agent", *agent.routing().args())
        return res if res.code == "OK" else None

    async def report_presence(self, tenant_id: str, agent_ids: Sequence[str]) -> list[str]:
        """Agents seen on a console now; returns those restored from automatic away."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE agents SET last_seen_at = now()
                   WHERE tenant_id = $1 AND agent_id = ANY($2::text[])""",
                tenant_id,
                sorted(set(agent_ids)),
            )
            rows = await conn.fetch(
                """UPDATE agents SET status = 1, auto_away = false, version = version + 1,
                       status_changed_at = now(), updated_at = now()
                   WHERE tenant_id = $1 AND agent_id = ANY($2::text[]) AND status = 2
                     AND auto_away RETURNING *""",
                tenant_id,
                sorted(set(agent_ids)),
            )
            if rows:
                await Outbox.add(
                    conn,
                    [_status_event(tenant_id, r["agent_id"], ONLINE, AWAY, True) for r in rows],
                )
        for r in rows:
            await self.push_agent(AgentRow.of(r))
        return [r["agent_id"] for r in rows]

    # -- background passes (run by every replica; each step is safe to race) ------------

    async def sweep_presence(self) -> int:
        """Online agents without a console report for the grace period become away."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """UPDATE agents SET status = 2, auto_away = true, version = version + 1,
                       status_changed_at = now(), updated_at = now()
                   WHERE status = 1 AND greatest(coalesce(last_seen_at, '-infinity'),
                                                 status_changed_at)
                         < now() - make_interval(secs => $1)
                   RETURNING *""",
                self.config.presence_grace_seconds,
            )
            if rows:
                await Outbox.add(
                    conn,
                    [
                        _status_event(r["tenant_id"], r["agent_id"], AWAY, ONLINE, True)
                        for r in rows
                    ],
                )
        for r in rows:
            log.info("agent_auto_away", tenant_id=r["tenant_id"], agent_id=r["agent_id"])
            await self.push_agent(AgentRow.of(r))
        return len(rows)

    async def sweep_sla(self) -> int:
        """Requeue conversations whose agent did not reply within the SLA."""
        if self.config.first_reply_sla_seconds <= 0:
            return 0
        rows = await self.pool.fetch(
            """SELECT tenant_id, conversation_id, agent_id, version FROM conversations
               WHERE state = 'assigned' AND first_reply_at IS NULL
                 AND assigned_at < now() - make_interval(secs => $1)
               ORDER BY assigned_at LIMIT 500""",
            self.config.first_reply_sla_seconds,
        )
        done = 0
        for r in rows:
            if await self.requeue(
                r["tenant_id"],
                r["conversation_id"],
                r["agent_id"],
                QueueReason.QUEUE_REASON_AGENT_TIMEOUT,
                r["version"],
            ):
                done += 1
                log.info(
                    "conversation_sla_requeued",
                    tenant_id=r["tenant_id"],
                    conversation_id=r["conversation_id"],
                    agent_id=r["agent_id"],
                )
        return done

    async def sync_agents(self) -> int:
        """Push agents whose Redis copy is behind, or whose shift started or ended."""
        agents = await self._all_agents()
        by_tenant: dict[str, list[AgentRow]] = {}
        for a in agents:
            by_tenant.setdefault(a.tenant_id, []).append(a)
        pushed = 0
        for tenant_id, rows in by_tenant.items():
            try:
                marks = await self.store.agent_marks(tenant_id)
            except NoState:
                await self.rebuild(tenant_id)  # loads every agent at its current version
                continue
            for a in rows:
                now_on = a.on_shift()
                mark = marks.get(a.agent_id)
                if mark is None or mark[0] < a.version:
                    await self.push_agent(a)
                    pushed += 1
                elif mark[1] != now_on:
                    await self.run(a.tenant_id, "shift", a.agent_id, int(now_on))
                    pushed += 1
        return pushed

    async def _all_agents(self) -> list[AgentRow]:
        """Every agent's profile, parsed again only when its version moved.

        Every change of a profile or status bumps ``version``, so the once-a-second
        pass reads three columns per agent instead of parsing every profile (at
        1,000 agents that was ~15 ms of event loop per second).
        """
        heads = await self.pool.fetch("SELECT tenant_id, agent_id, version FROM agents")
        stale = [
            (r["tenant_id"], r["agent_id"])
            for r in heads
            if (a := self._agent_cache.get((r["tenant_id"], r["agent_id"]))) is None
            or a.version != r["version"]
        ]
        if stale:
            for r in await self.pool.fetch(
                """SELECT a.* FROM agents a
                   JOIN unnest($1::text[], $2::text[]) AS k(t, id)
                     ON a.tenant_id = k.t AND a.agent_id = k.id""",
                [t for t, _ in stale],
                [a for _, a in stale],
            ):
                row = AgentRow.of(r)
                self._agent_cache[(row.tenant_id, row.agent_id)] = row
        agents: list[AgentRow] = []
        for r in heads:
            cached = self._agent_cache.get((r["tenant_id"], r["agent_id"]))
            if cached is not None:  # None: changed between the two reads; next pass
                agents.append(cached)
        if len(self._agent_cache) > len(heads):
            keep = {(r["tenant_id"], r["agent_id"]) for r in heads}
            self._agent_cache = {k: v for k, v in self._agent_cache.items() if k in keep}
        return agents

    async def repair(self, tenant_ids: Sequence[str], older_than_s: float = 10.0) -> int:
        """Re-record changes whose durable record was never confirmed (a replica died)."""
        repaired = 0
        cutoff = now_ms() - int(older_than_s * 1000)
        for tenant_id in tenant_ids:
            cids = await self.store.dirty(tenant_id, cutoff)
            if cids:
                await self.run(tenant_id, "get", *cids)
                await self.store.forget_dirty(tenant_id, cutoff)
                repaired += len(cids)
        return repaired

    async def announce_positions(self, limit: int = 5000) -> int:
        """Publish the queue positions that changed since they were last announced."""
        tenants = [
            r["tenant_id"]
            for r in await self.pool.fetch(
                "SELECT DISTINCT tenant_id FROM conversations WHERE state = 'waiting'"
            )
        ]
        sent = 0
        for tenant_id in tenants:
            try:
                _, rows = await self.store.positions(tenant_id, limit)
            except NoState:
                continue
            envs = [
                new_event(
                    ConversationQueued(
                        position=int(pos),
                        reason=QueueReason.ValueType(int(reason or 1)),
                        team_id=team,
                        previous_agent_id=prev,
                        priority=Priority.ValueType(int(prio or 2)),
                        position_update=True,
                    ),
                    tenant_id=tenant_id,
                    producer=PRODUCER,
                    conversation_id=cid,
                )
                for cid, pos, team, prio, reason, prev in rows
            ]
            if envs:
                async with self.pool.acquire() as conn, conn.transaction():
                    await Outbox.add(conn, envs)
                sent += len(envs)
        return sent

    async def tenants(self) -> list[str]:
        """Every tenant the engine has routing state for."""
        return [
            r["tenant_id"] for r in await self.pool.fetch("SELECT tenant_id FROM redis_generations")
        ]


def _priority(value: int) -> int:
    return value if value in (1, 2, 3, 4) else Priority.PRIORITY_NORMAL


def _status_event(
    tenant_id: str, agent_id: str, status: int, previous: int, automatic: bool = False
) -> Envelope:
    return new_event(
        AgentStatusChanged(
            agent_id=agent_id,
            status=AgentStatus.ValueType(status),
            previous_status=AgentStatus.ValueType(previous),
            automatic=automatic,
        ),
        tenant_id=tenant_id,
        producer=PRODUCER,
    )


def _transferred(
    tenant_id: str,
    conversation_id: str,
    from_agent: str,
    to_agent: str,
    to_team: str,
    reason: str,
    actor_id: str,
) -> Envelope:
    return new_event(
        ConversationTransferred(
            from_agent_id=from_agent,
            to_agent_id=to_agent,
            to_team_id=to_team,
            reason=reason,
            actor_id=actor_id,
            actor_kind=ActorKind.ACTOR_KIND_AGENT if actor_id else ActorKind.ACTOR_KIND_SYSTEM,
        ),
        tenant_id=tenant_id,
        producer=PRODUCER,
        conversation_id=conversation_id,
    )


def _raise_for(res: ScriptResult, conversation_id: str, agent_id: str) -> None:
    code = res.code
    if code in ("OK", "SAME"):
        return
    if code == "NOTFOUND":
        raise NotFound(f"conversation {conversation_id!r} not found")
    if code == "NOAGENT":
        raise NotFound(f"agent {agent_id!r} not found")
    if code == "TAKEN":
        raise AlreadyExists(
            f"conversation {conversation_id!r} is assigned to agent {res.extra[0]!r}"
        )
    if code in _PRECONDITIONS:
        raise FailedPrecondition(_PRECONDITIONS[code])
    raise FailedPrecondition(code)


def _change_of(res: ScriptResult, conversation_id: str) -> Change:
    for c in res.changes:
        if c.conversation_id == conversation_id:
            return c
    raise Unavailable(f"no state returned for {conversation_id!r}")
