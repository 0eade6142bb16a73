"""Event-loop lag: how late the loop runs a callback that was due.

Everything a pod does for its sockets runs on one event loop, so a loop held
by one long step, or waiting for a core, delays every connection at once.
The monitor asks to be woken every ``interval`` seconds and records how late
it was; the histogram's tail is the stall a client could have seen.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Histogram

__all__ = ["LOOP_LAG_SECONDS", "LoopLagMonitor"]

LOOP_LAG_SECONDS = Histogram(
    "livedesk_event_loop_lag_seconds",
    "How late the event loop ran a wake-up that was due (sampled every 25 ms).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class LoopLagMonitor:
    """Samples the running loop's lag into :data:`LOOP_LAG_SECONDS` until stopped."""

    def __init__(self, interval: float = 0.025) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Begin sampling on the running loop."""
        self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        """Stop sampling."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.monotonic() + self._interval
        # A timer callback, not a task: nothing to cancel-and-await at shutdown,
        # and no coroutine frame per sample.
        self._handle = loop.call_at(loop.time() + self._interval, self._wake, loop)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        LOOP_LAG_SECONDS.observe(max(0.0, time.monotonic() - self._due))
        self._schedule(loop)
