"""The warm-up at start (warmup.py), on a real chDB store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from livedesk.analytics import daily
from livedesk.analytics.warmup import WarmUp, warm_up
from livedesk.platform.testing import wait_until

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from livedesk.analytics.store import Store
    from livedesk.platform.bus import Envelope

    Ingest = Callable[[Store, list[Envelope]], Awaitable[None]]


async def test_the_latest_active_tenants_are_warmed_first(
    migrated: Store, history: list[Envelope], builder: Any, ingest_events: Ingest
) -> None:
    assert await warm_up(migrated, 3) == [""]  # no data yet: the engine only
    await ingest_events(migrated, history)  # tenant-a, and tenant-b's noise
    later = builder("tenant-b")
    later.created("b9", "15:00", "web")
    await ingest_events(migrated, later.events)
    await daily.refresh(migrated)
    assert await warm_up(migrated, 1) == ["tenant-b"]
    assert await warm_up(migrated, 5) == ["tenant-b", "tenant-a"]
    assert await warm_up(migrated, 0) == [""]


def _done(warm: WarmUp) -> Callable[[], Awaitable[bool]]:
    async def done() -> bool:
        try:
            await warm.check()
        except RuntimeError:
            return False
        return True

    return done


async def test_ready_waits_for_the_warm_up_and_a_failed_one_counts_as_done(
    migrated: Store,
) -> None:
    warm = WarmUp(migrated, 3, timeout=30)
    try:
        with pytest.raises(RuntimeError, match="warming up"):
            await warm.check()
        await wait_until(_done(warm), timeout=30, what="warm-up done")
    finally:
        await warm.stop()
    readers = await migrated.open_readers(1)
    await readers.close()  # every query of this warm-up fails
    failed = WarmUp(readers, 3, timeout=30)
    try:
        await wait_until(_done(failed), timeout=30, what="failed warm-up done")
    finally:
        await failed.stop()
