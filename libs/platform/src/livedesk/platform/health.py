"""Liveness and readiness.

``/healthz`` answers 200 while the process runs its event loop. ``/readyz``
answers 200 only when every registered dependency check passes and the
service is not draining; Kubernetes stops routing to it otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from livedesk.platform.metrics import READY

__all__ = ["Check", "CheckResult", "HealthChecks"]

Check = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of one dependency check."""

    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class HealthChecks:
    """The dependency checks of one service, and whether it is draining."""

    timeout: float = 2.0
    checks: dict[str, Check] = field(default_factory=dict)
    draining: bool = False

    def add(self, name: str, check: Check) -> None:
        """Register ``check``: ready requires it to return without raising, in time."""
        self.checks[name] = check

    async def _run(self, name: str, check: Check) -> CheckResult:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(check(), self.timeout)
        except Exception as exc:  # any failure means "not ready", with the reason shown
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return CheckResult(name, False, detail, time.perf_counter() - start)
        return CheckResult(name, True, "ok", time.perf_counter() - start)

    async def run(self) -> tuple[bool, list[CheckResult]]:
        """Run every check at once; (ready, results)."""
        results = list(await asyncio.gather(*(self._run(n, c) for n, c in self.checks.items())))
        ready = not self.draining and all(r.ok for r in results)
        READY.set(1 if ready else 0)
        return ready, results
