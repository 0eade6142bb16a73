"""The event-loop lag monitor sees a loop held by a blocking step."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from livedesk.platform.loop_lag import LoopLagMonitor
from livedesk.platform.testing import wait_until

NAME = "livedesk_event_loop_lag_seconds"


def _count(le: str | None = None) -> float:
    if le is None:
        return REGISTRY.get_sample_value(f"{NAME}_count") or 0.0
    return REGISTRY.get_sample_value(f"{NAME}_bucket", {"le": le}) or 0.0


async def _samples_after(n: float) -> None:
    async def more() -> bool:
        return _count() > n

    await wait_until(more, timeout=5, interval=0.005, what="a lag sample")


async def test_a_blocked_loop_is_recorded_as_lag() -> None:
    monitor = LoopLagMonitor(interval=0.01)
    monitor.start()
    try:
        await _samples_after(_count())  # sampling runs
        total, quick = _count(), _count("0.025")
        # Blocking on purpose: this is the stall the monitor exists to see.
        time.sleep(0.1)  # noqa: ASYNC251 - the next wake-up is >= 90 ms late
        await _samples_after(total)
        assert _count() - total >= 1
        assert _count("0.025") - quick < _count() - total  # one sample landed late
    finally:
        monitor.stop()
    stopped = _count()
    await asyncio.sleep(0.05)
    assert _count() == stopped  # no sampling after stop


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopLagMonitor(interval=0)
