"""Warming ClickHouse up for the reports before the service says it is ready.

The first reports after a start paid for cold caches: at 1M conversations
(chDB) the first overview took 354 ms, the next ones 144 and 61; asking one
report of another tenant first brought the first to 122 ms, so part of the
cost is the engine's and part the data's. At start the service therefore asks
the reports dashboards open with, once, for the tenants with the latest
activity, over their last :data:`WARM_DAYS` days of data (whole days, and up
to a mid-hour instant), and ``/readyz`` waits for it, within a bound.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from livedesk.analytics import reports
from livedesk.analytics.reports import ReportFilter
from livedesk.platform.logging import get_logger
from livedesk.platform.tasks import cancel_and_wait

if TYPE_CHECKING:
    from collections.abc import Mapping

    from livedesk.analytics.store import Store

__all__ = ["WARM_DAYS", "WarmUp", "warm_up"]

log = get_logger("livedesk.analytics.warmup")

WARM_DAYS = 30
"""Days of each tenant's data the warm-up reads (dashboards' longest default)."""

# Most recently changed first; the day of each tenant's latest data.
_ACTIVE = """
SELECT tenant_id, max(day) FROM report_days
GROUP BY tenant_id ORDER BY max(dirtied_at) DESC, tenant_id LIMIT {n:UInt32}"""


async def warm_up(
    store: Store, tenants: int, settings: Mapping[str, Any] | None = None
) -> list[str]:
    """Ask the main reports once for the ``tenants`` most recently active; the tenants asked.

    Without any data yet, for no tenant (an empty one): that still warms the engine.
    """
    rows = await store.query(_ACTIVE, {"n": tenants}) if tenants else []
    today = dt.datetime.now(dt.UTC).date()
    targets = [(str(t), day) for t, day in rows] or [("", today)]
    for tenant_id, day in targets:
        end = dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(days=1)
        mid_hour = end - dt.timedelta(hours=11, minutes=42, seconds=37)
        for until in (end, mid_hour):
            flt = ReportFilter(tenant_id, until - dt.timedelta(days=WARM_DAYS), until)
            await reports.overview(store, flt, settings)
            await reports.breakdown(store, flt, "agent", settings)
            await reports.breakdown(store, flt, "inbox", settings)
            await reports.volume(store, flt, "day", settings)
    return [t for t, _ in targets]


class WarmUp:
    """:func:`warm_up` in the background; :meth:`check` (a readiness check) raises until done.

    A warm-up that fails or takes longer than ``timeout`` seconds is logged and
    counts as done: it only ever makes the first reports faster.
    """

    def __init__(
        self,
        store: Store,
        tenants: int,
        timeout: float,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(store, tenants, timeout, settings), name="report-warm-up"
        )

    @staticmethod
    async def _run(
        store: Store, tenants: int, timeout: float, settings: Mapping[str, Any] | None
    ) -> None:
        started = time.perf_counter()
        try:
            warmed = await asyncio.wait_for(warm_up(store, tenants, settings), timeout)
        except Exception as exc:  # the service works without it, only slower
            log.warning("report_warm_up_failed", error=repr(exc))
            return
        log.info(
            "report_warm_up_done",
            tenants=len(warmed),
            seconds=round(time.perf_counter() - started, 3),
        )

    async def check(self) -> None:
        """Raise while the warm-up runs."""
        if not self._task.done():
            raise RuntimeError("warming up the report queries")

    async def stop(self) -> None:
        """Cancel the warm-up if it still runs."""
        await cancel_and_wait(self._task)
