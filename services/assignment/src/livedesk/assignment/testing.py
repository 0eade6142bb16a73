"""Test support for the assignment engine (used by its tests and the benchmark)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from livedesk.assignment.engine import AgentRow, Engine
from livedesk.assignment.recorder import Recorder
from livedesk.assignment.shifts import Shift, ShiftException
from livedesk.assignment.store import RoutingStore

__all__ = ["EngineKit", "agent_row", "delete_prefix"]


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix`` (never the whole database: it may be shared)."""
    batch = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    for i in range(0, len(batch), 1000):
        await client.unlink(*batch[i : i + 1000])


@dataclass
class EngineKit:
    """An engine with its parts."""

    engine: Engine
    store: RoutingStore
    recorder: Recorder
    pool: asyncpg.Pool


def agent_row(
    tenant_id: str,
    agent_id: str,
    *,
    capacity: int = 2,
    skills: tuple[str, ...] = (),
    teams: tuple[str, ...] = (),
    time_zone: str = "",
    shifts: tuple[Shift, ...] = (),
    exceptions: tuple[ShiftException, ...] = (),
    weight: int = 0,
) -> AgentRow:
    """A profile to upsert."""
    return AgentRow(
        tenant_id=tenant_id,
        agent_id=agent_id,
        display_name=agent_id,
        status=3,
        capacity=capacity,
        skills=tuple(sorted(skills)),
        team_ids=tuple(sorted(teams)),
        time_zone=time_zone,
        shifts=shifts,
        exceptions=exceptions,
        priority_weight=weight,
        version=0,
    )
