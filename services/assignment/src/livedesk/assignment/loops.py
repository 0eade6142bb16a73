"""Background passes every replica runs; each step is safe when replicas race.

- live state: a tenant whose Redis state vanished (Redis restarted or was
  flushed) is rebuilt from PostgreSQL, then drained;
- agents: Redis copies behind PostgreSQL are pushed, shift starts and ends applied;
- presence: online agents whose console stopped reporting become away;
- SLA: conversations without a first reply in time are requeued;
- repair: changes whose durable record a dead replica never made are re-recorded;
- positions: queue positions that moved are announced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from livedesk.assignment.engine import Engine
from livedesk.platform.logging import get_logger

__all__ = ["background_loops"]

log = get_logger("livedesk.assignment.loops")


async def _every(name: str, interval: float, step: Callable[[], Awaitable[object]]) -> None:
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("background_step_failed", loop=name, exc_info=True)
        await asyncio.sleep(interval)


@asynccontextmanager
async def background_loops(
    engine: Engine, *, sweep_interval: float, position_interval: float
) -> AsyncIterator[None]:
    """Run the passes until exit."""

    async def live_and_repair() -> None:
        tenants = await engine.tenants()
        await engine.ensure_live(tenants)
        await engine.repair(tenants)

    loops = {
        "live": (sweep_interval, live_and_repair),
        "agents": (sweep_interval, engine.sync_agents),
        "presence": (sweep_interval, engine.sweep_presence),
        "sla": (sweep_interval, engine.sweep_sla),
        "positions": (position_interval, engine.announce_positions),
    }
    tasks = [
        asyncio.create_task(_every(name, interval, step), name=f"loop:{name}")
        for name, (interval, step) in loops.items()
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
