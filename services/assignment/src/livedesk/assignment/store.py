"""The live routing state in Redis: one server-side script makes every change atomically.

All of a tenant's keys carry the tenant id as their Redis Cluster hash tag
(``<prefix>{<tenant>}:...``), so every operation of the script touches one slot.
The script (``engine.lua``) is the only writer of those keys; this module
names its operations, encodes their arguments and decodes what they changed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

__all__ = [
    "AgentRouting",
    "Change",
    "NoState",
    "RestoredConversation",
    "RoutingStore",
    "ScriptResult",
    "now_ms",
]

_SCRIPT = resources.files("livedesk.assignment").joinpath("engine.lua").read_text("utf-8")

#: Conversation states in Redis and their names in PostgreSQL.
STATE_NAMES = {"w": "waiting", "a": "assigned", "u": "unassigned", "r": "resolved"}
STATE_CODES = {v: k for k, v in STATE_NAMES.items()}


def now_ms() -> int:
    """Wall-clock milliseconds: the time base of queue order and idle time."""
    return int(time.time() * 1000)


class NoState(Exception):
    """The tenant's routing state is missing from Redis (lost, or never built)."""


@dataclass(frozen=True, slots=True)
class Change:
    """The state of one conversation after an operation changed it."""

    conversation_id: str
    state: str
    epoch: int
    agent_id: str
    team_id: str
    skills: tuple[str, ...]
    priority: int
    queued_ms: int
    created_ms: int
    inbox_id: str
    reason: int
    excluded_agent: str
    previous_agent: str
    assigned_by: int
    assigned_ms: int
    actor_id: str
    position: int

    @classmethod
    def parse(cls, raw: Sequence[bytes | int]) -> Change:
        """Decode one ``{conv, position, CHANGE_FIELDS...}`` entry of the script."""
        cid, pos, s, ep, ag, tm, sk, pr, qms, cms, inbox, rs, x, pa, by, ams, actor = [
            v.decode() if isinstance(v, bytes) else str(v) for v in raw
        ]
        return cls(
            conversation_id=cid,
            state=STATE_NAMES[s],
            epoch=int(ep),
            agent_id=ag,
            team_id=tm,
            skills=tuple(v for v in sk.split(",") if v) if sk else (),
            priority=int(pr or "2"),
            queued_ms=int(float(qms or "0")),
            created_ms=int(float(cms or "0")),
            inbox_id=inbox,
            reason=int(rs or "1"),
            excluded_agent=x,
            previous_agent=pa,
            assigned_by=int(by or "0"),
            assigned_ms=int(float(ams or "0")),
            actor_id=actor,
            position=int(pos),
        )


@dataclass(frozen=True, slots=True)
class ScriptResult:
    """What one script call did."""

    gen: int
    code: str
    changes: list[Change]
    extra: list[str]
    more: bool


@dataclass(frozen=True, slots=True)
class AgentRouting:
    """The part of an agent's profile the script routes with."""

    agent_id: str
    version: int
    status: int
    capacity: int
    weight: int
    skills: Sequence[str]
    team_ids: Sequence[str]
    on_shift: bool
    last_assigned_ms: int = 0

    def args(self) -> list[str | int]:
        """Script arguments: aid version status capacity weight skills teams on_shift last."""
        return [
            self.agent_id,
            self.version,
            self.status,
            self.capacity,
            self.weight,
            _set(self.skills),
            _set(self.team_ids),
            1 if self.on_shift else 0,
            self.last_assigned_ms,
        ]


@dataclass(frozen=True, slots=True)
class RestoredConversation:
    """A conversation as PostgreSQL has it, to put back into Redis."""

    conversation_id: str
    state: str
    epoch: int
    agent_id: str
    team_id: str
    skills: Sequence[str]
    priority: int
    queued_ms: int
    created_ms: int
    inbox_id: str
    reason: int
    excluded_agent: str
    assigned_by: int
    assigned_ms: int


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _set(items: Sequence[str]) -> str:
    """ ",a,b," — the membership encoding the script searches with."""
    return "," + ",".join(sorted(set(items))) + "," if items else ""


def skills_arg(skills: Sequence[str]) -> str:
    """Required skills as the script stores them."""
    return _set(skills)


class RoutingStore:
    """Calls the routing script for one tenant at a time."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(_SCRIPT)

    def key(self, tenant_id: str, name: str) -> str:
        """Full name of one of ``tenant_id``'s keys."""
        return f"{self.prefix}{{{tenant_id}}}:{name}"

    def gen_key(self, tenant_id: str) -> str:
        """The generation key: present exactly when the tenant's state is live."""
        return self.key(tenant_id, "gen")

    async def call(self, tenant_id: str, op: str, *args: str | int) -> ScriptResult:
        """Run ``op``; raises NoState when the tenant's state must be rebuilt first."""
        raw = await self._script(keys=[self.gen_key(tenant_id)], args=[op, now_ms(), *args])
        if len(raw) == 1:
            raise NoState(tenant_id)
        return ScriptResult(
            gen=int(_s(raw[0]) or 0),
            code=_s(raw[1]),
            changes=[Change.parse(c) for c in raw[2]],
            extra=[_s(x) for x in raw[3]],
            more=_s(raw[4]) == "1",
        )

    async def positions(self, tenant_id: str, limit: int) -> tuple[int, list[list[str]]]:
        """Queue positions changed since last announced: (gen, [[conv, pos, team, prio, ...]])."""
        raw = await self._script(
            keys=[self.gen_key(tenant_id)], args=["positions", now_ms(), limit]
        )
        if len(raw) == 1:
            raise NoState(tenant_id)
        return int(_s(raw[0])), [[_s(v) for v in row] for row in raw[3]]

    async def agent_marks(self, tenant_id: str) -> dict[str, tuple[int, bool]]:
        """Every agent Redis has: agent id -> (version, on shift), in one script call."""
        raw = await self._script(keys=[self.gen_key(tenant_id)], args=["agent_marks", now_ms()])
        if len(raw) == 1:
            raise NoState(tenant_id)
        flat = raw[3]
        return {
            _s(flat[i]): (int(_s(flat[i + 1]) or 0), _s(flat[i + 2]) == "1")
            for i in range(0, len(flat), 3)
        }

    # -- rebuild -------------------------------------------------------------------------

    async def restore(
        self,
        tenant_id: str,
        gen: int,
        agents: Sequence[AgentRouting],
        conversations: Sequence[RestoredConversation],
    ) -> ScriptResult:
        """Write a tenant's whole state (after wiping it), then make it live with ``gen``."""
        await self.wipe(tenant_id)
        key = [self.gen_key(tenant_id)]
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for n, agent in enumerate(agents, 1):
                await self._script(
                    keys=key, args=["restore_agent", now, *agent.args()], client=pipe
                )
                if n % 500 == 0:
                    await pipe.execute()
            await pipe.execute()
            for n, c in enumerate(conversations, 1):
                await self._script(
                    keys=key,
                    args=[
                        "restore_conv",
                        now,
                        c.conversation_id,
                        STATE_CODES[c.state],
                        c.epoch,
                        c.agent_id,
                        c.team_id,
                        _set(c.skills),
                        c.priority,
                        c.queued_ms,
                        c.created_ms,
                        c.inbox_id,
                        c.reason,
                        c.excluded_agent,
                        "",
                        c.assigned_by,
                        c.assigned_ms,
                    ],
                    client=pipe,
                )
                if n % 500 == 0:
                    await pipe.execute()
            await pipe.execute()
        return await self.call(tenant_id, "finish", gen)

    async def wipe(self, tenant_id: str) -> int:
        """Delete every key of the tenant (only while its state is not live)."""
        # The generation first: from here on every script call on the tenant refuses to run.
        await self.redis.delete(self.gen_key(tenant_id))
        pattern = _glob_escape(self.key(tenant_id, "")) + "*"
        deleted = 0
        batch: list[Any] = []
        async for key in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.redis.unlink(*batch)
        return deleted

    async def confirm_durable(self, tenant_id: str, changes: Sequence[Change]) -> None:
        """Forget the repair marks of changes PostgreSQL now has."""
        if changes:
            await self.redis.zrem(
                self.key(tenant_id, "dirty"),
                *(f"{c.conversation_id}|{c.epoch}" for c in changes),
            )

    async def dirty(self, tenant_id: str, older_than_ms: int) -> list[str]:
        """Conversations changed before ``older_than_ms`` whose durable record is unconfirmed."""
        raw = await self.redis.zrangebyscore(
            self.key(tenant_id, "dirty"), 0, older_than_ms, start=0, num=500
        )
        return sorted({_s(m).rsplit("|", 1)[0] for m in raw})

    async def forget_dirty(self, tenant_id: str, older_than_ms: int) -> None:
        """Drop repair marks up to ``older_than_ms`` (their conversations were re-recorded)."""
        await self.redis.zremrangebyscore(self.key(tenant_id, "dirty"), 0, older_than_ms)

    # -- reads ---------------------------------------------------------------------------

    async def agent_loads(self, tenant_id: str, agent_ids: Sequence[str]) -> dict[str, int]:
        """Live number of conversations of each agent (0 when unknown to Redis)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for aid in agent_ids:
                _ = pipe.hget(self.key(tenant_id, f"a:{aid}"), "load")
            values = await pipe.execute()
        return {
            aid: int(_s(v)) if v is not None else 0
            for aid, v in zip(agent_ids, values, strict=True)
        }

    async def queue_page(
        self, tenant_id: str, team_id: str | None, offset: int, limit: int
    ) -> tuple[list[tuple[str, int, str]], int]:
        """Waiting conversations in routing order: ([(conv, position, team)], total)."""
        if team_id is None:
            teams = sorted(_s(t) for t in await self.redis.smembers(self.key(tenant_id, "tqs")))
        else:
            teams = [team_id]
        rows: list[tuple[str, int, str]] = []
        total = 0
        for team in teams:
            key = self.key(tenant_id, f"tq:{team}")
            size = int(await self.redis.zcard(key))
            if offset - total < size and len(rows) < limit:
                start = max(0, offset - total)
                members = await self.redis.zrange(key, start, start + limit - len(rows) - 1)
                rows += [(_s(m), start + i + 1, team) for i, m in enumerate(members)]
            total += size
        return rows, total

    async def conversation_fields(
        self, tenant_id: str, conversation_ids: Sequence[str]
    ) -> list[dict[str, str]]:
        """Raw hash fields of conversations (empty dict when unknown)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in conversation_ids:
                _ = pipe.hgetall(self.key(tenant_id, f"c:{cid}"))
            values = await pipe.execute()
        return [{_s(k): _s(v) for k, v in h.items()} for h in values]


def _glob_escape(text: str) -> str:
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)
