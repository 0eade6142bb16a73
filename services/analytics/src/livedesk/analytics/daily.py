"""Keeping ``report_daily`` current: the report items of each tenant's UTC days, pre-aggregated.

Each computation of a day writes its rows per UTC hour (``report_hourly``,
read for the whole hours of a range's partial first and last days, and with
each item's instant, ``items``, for the partial hours at its ends) and per
day (``report_daily``, from the hours), with the same id.

Every summary the ingester (re-)computes marks the days its items fall on
dirty in ``report_days``, and their hours in ``report_hours`` (materialized
views, in the same INSERT: nothing is added to the ingester's own work).
Erasures mark days, and all their hours, dirty too (:func:`drop_days`).
A business-hours change marks only its inbox (:func:`mark_hours_changed`):
reports keep reading the days, with that inbox's business seconds under the
new hours written once (:func:`write_hours_fix`) or derived from the stored
items, and the refresher re-computes those days a few per round
(:data:`HOURS_STALE_DAYS`). The refresher re-computes whole days; reports also
read the hours of a dirty day that did not change since its last computation
(``reports.py``).
:class:`DailyRefresher` re-computes the dirty days in the background, one day
per statement, so a refresh never holds the store for long: each computation
gets an id (``computed_at``, the store's clock when it started, minus a margin
on a shared server), its rows are written, then the day is stamped with it.
A day whose summaries change afterwards is dirty again (its marks are newer),
and reports compute it live until the next refresh (``reports.py``), so
reports never wait for a refresh and never see a stale day.

Computations of a day older than its latest and made more than
:data:`KEEP_OLD` seconds ago are deleted by the refresher every
:data:`CLEANUP_INTERVAL` seconds. One may have been replaced just before: a
report that planned its query on it sees the new stamp when it checks its
plan afterwards, and runs again (``reports._planned``), so it never counts
rows half deleted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING

from livedesk.analytics.metrics import (
    REPORT_DAYS_REFRESHED,
    REPORT_DAYS_STALE,
    REPORT_REFRESH_SECONDS,
)
from livedesk.analytics.reports import (
    DURATION_KINDS,
    business_hours,
    fixed,
    hours_changes,
    hours_fix_sql,
    items_sql,
)
from livedesk.analytics.schema import render
from livedesk.platform.logging import get_logger
from livedesk.platform.tasks import cancel_and_wait

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from livedesk.analytics.store import Store

__all__ = [
    "CLEANUP_INTERVAL",
    "KEEP_OLD",
    "DailyRefresher",
    "Day",
    "conversation_days",
    "delete_replaced",
    "drop_days",
    "mark_days",
    "mark_hours_changed",
    "mark_tenant_dirty",
    "refresh",
    "write_hours_fix",
]

log = get_logger("livedesk.analytics.daily")

KEEP_OLD = 60.0
"""Seconds a computation of a day is kept at least, replaced or not."""

CLEANUP_INTERVAL = 600.0
"""Seconds between two deletions of replaced computations by :class:`DailyRefresher`.

A lightweight DELETE costs 0.2-2 s of chDB time (holding the write lane from ingestion)
even for one day's rows: deleting after every round would cost more than the
round itself. Replaced rows are skipped by the primary key
(``computed_at``) meanwhile."""

SERVER_MARGIN = 10.0
"""On a shared server, seconds a computation's id is set back: a summary written
by another replica just before may not be visible yet (its day stays dirty)."""

_DAY_MS = 86_400_000

# Newest days first: reports mostly ask for recent ranges, and after a change of
# every day (an upgrade) the last 30 days are pre-aggregated again in half the
# round instead of at its end.
_DIRTY = """
SELECT tenant_id, day FROM report_days
GROUP BY tenant_id, day HAVING max(dirtied_at) >= max(computed_at)
ORDER BY tenant_id, day DESC"""

# Clean days computed at or before their tenant's last business-hours change:
# exact meanwhile (report_hours_fix, or the items), re-computed a few per round.
_HOURS_STALE = """
SELECT d.tenant_id, d.day FROM (
    SELECT tenant_id, day, max(dirtied_at) AS dirtied, max(computed_at) AS computed
    FROM report_days GROUP BY tenant_id, day) AS d
INNER JOIN (
    SELECT tenant_id, max(changed_at) AS changed FROM report_hours_changes
    GROUP BY tenant_id) AS h ON h.tenant_id = d.tenant_id
WHERE d.dirtied < d.computed AND d.computed <= h.changed
ORDER BY d.tenant_id, d.day DESC"""

HOURS_STALE_DAYS = 2
"""Days computed before a business-hours change that a refresh round re-computes.

Reports read them exactly meanwhile (the change's business seconds are written
once, :func:`write_hours_fix`); each day re-computed holds the write lane (the
ingester waits behind it) and a core ≈ 0.3 s at 17k conversations a day, so they are
re-computed slowly rather than all at once (61 days: 31 rounds, ≈ 15 minutes)."""

_NOW = "SELECT toUInt64(toUnixTimestamp64Micro(now64(6)))"

_WRITE_HOURS = """
INSERT INTO report_hourly (tenant_id, day, hour, computed_at, kind, inbox_id, team_id, agents,
                           agent, n, total, vals, bh_n, bh_total, bh_vals, links, slots, items)
SELECT tenant_id, day, hour, computed_at, kind, inbox_id, team_id, agents, agent, n, total, vals,
       bh_n, bh_total, bh_vals, links,
       if(empty(slot_list), [], arrayMap(i -> toUInt32(countEqual(slot_list, i)), range(4))),
       items
FROM (
    SELECT {tenant:String} AS tenant_id, toDate(at) AS day, toHour(at) AS hour,
           {computed:UInt64} AS computed_at,
           kind, inbox_id, team_id, agents, agent, count() AS n, sum(v) AS total,
           groupArrayIf(v, kind IN {durations:Array(String)}) AS vals,
           countIf(bh >= 0) AS bh_n, sumIf(bh, bh >= 0) AS bh_total,
           groupArrayIf(bh, bh >= 0) AS bh_vals,
           groupArrayIf(link, link != toDateTime64(0, 3, 'UTC')) AS links,
           groupArrayIf(toUInt8(intDiv(toUnixTimestamp64Milli(at) % 3600000, 900000)),
                        kind IN ('created', 'resolution')) AS slot_list,
           groupArray((at, v, bh, link)) AS items
    FROM ({items})
    GROUP BY day, hour, kind, inbox_id, team_id, agents, agent
)
SETTINGS use_skip_indexes_if_final_exact_mode = 0"""

# The day's rows from its hours (the same items: far cheaper than deriving them again).
_WRITE_DAY = """
INSERT INTO report_daily
SELECT tenant_id, day, computed_at, kind, inbox_id, team_id, agents, agent, sum(n), sum(total),
       groupArrayArray(vals), sum(bh_n), sum(bh_total), groupArrayArray(bh_vals),
       groupArrayArray(links),
       if(sum(length(slots)) = 0, [],
          arrayMap(x -> toUInt32(x), sumForEach(arrayMap(
              i -> if(intDiv(i, 4) = hour AND notEmpty(slots), slots[i % 4 + 1], 0), range(96)))))
FROM report_hourly
WHERE tenant_id = {tenant:String} AND day = {day:Date} AND computed_at = {computed:UInt64}
GROUP BY tenant_id, day, computed_at, kind, inbox_id, team_id, agents, agent"""

_STAMP = """
INSERT INTO report_days (tenant_id, day, dirtied_at, computed_at)
VALUES ({tenant:String}, {day:Date}, 0, {computed:UInt64})"""

_OLD = """
SELECT tenant_id, day, computed_at FROM (
    SELECT tenant_id, day, computed_at FROM report_daily
    WHERE tenant_id IN {tenants:Array(String)} AND computed_at < {before:UInt64}
    UNION ALL
    SELECT tenant_id, day, computed_at FROM report_hourly
    WHERE tenant_id IN {tenants:Array(String)} AND computed_at < {before:UInt64})
GROUP BY tenant_id, day, computed_at
HAVING (tenant_id, day, computed_at) NOT IN (
    SELECT tenant_id, day, max(computed_at) FROM report_days
    WHERE tenant_id IN {tenants:Array(String)} GROUP BY tenant_id, day)"""

_DELETE_OLD = (
    "DELETE FROM {table}{local} {on_cluster} WHERE (tenant_id, day, computed_at) IN "
    "(SELECT arrayJoin({old:Array(Tuple(String, Date, UInt64))}))"
)

# Per tenant: the latest version of report_hours_fix, and how many rows older ones have.
_LATEST_FIX = """
SELECT tenant_id, max(version), countIf(version < newest) FROM (
    SELECT tenant_id, version, max(version) OVER (PARTITION BY tenant_id) AS newest
    FROM report_hours_fix WHERE tenant_id IN {tenants:Array(String)})
GROUP BY tenant_id"""

_DELETE_OLD_FIX = (
    "DELETE FROM report_hours_fix{local} {on_cluster} WHERE tenant_id IN {tenants:Array(String)}"
    " AND (tenant_id, version) NOT IN (SELECT arrayJoin({latest:Array(Tuple(String, UInt64))}))"
)

_TABLES = ("report_daily", "report_hourly", "report_hours_fix")
"""Where a computation's rows are (a day's, its hours', business seconds written again)."""

_MARK_TENANT = """
INSERT INTO report_days (tenant_id, day, dirtied_at, computed_at)
SELECT tenant_id, day, toUInt64(toUnixTimestamp64Micro(now64(6))), 0 FROM report_days
WHERE tenant_id = {tenant:String} GROUP BY tenant_id, day"""

# Every hour of the tenant's days (reports read clean hours of dirty days).
_MARK_TENANT_HOURS = """
INSERT INTO report_hours (tenant_id, day, hour, dirtied_at)
SELECT tenant_id, day, arrayJoin(range(24)), toUInt64(toUnixTimestamp64Micro(now64(6)))
FROM report_days WHERE tenant_id = {tenant:String} GROUP BY tenant_id, day"""

# Every day from a conversation's first to its last counted instant (a
# superset of its item days, so nothing it counted in stays clean).
_CONVERSATION_DAYS = """
SELECT DISTINCT tenant_id,
       toDate(first_at) + arrayJoin(range(toUInt32(toDate(last_at) - toDate(first_at)) + 1)) AS day
FROM conversation_summary FINAL
WHERE (tenant_id, conversation_id) IN (SELECT arrayJoin({keys:Array(Tuple(String, String))}))"""

_MARK_DAYS = """
INSERT INTO report_days (tenant_id, day, dirtied_at, computed_at)
SELECT d.1, d.2, toUInt64(toUnixTimestamp64Micro(now64(6))), 0
FROM (SELECT arrayJoin({days:Array(Tuple(String, Date))}) AS d)"""

_MARK_DAYS_HOURS = """
INSERT INTO report_hours (tenant_id, day, hour, dirtied_at)
SELECT d.1, d.2, arrayJoin(range(24)), toUInt64(toUnixTimestamp64Micro(now64(6)))
FROM (SELECT arrayJoin({days:Array(Tuple(String, Date))}) AS d)"""

_DELETE_DAYS = (
    "DELETE FROM {table}{local} {on_cluster} WHERE (tenant_id, day) IN "
    "(SELECT arrayJoin({days:Array(Tuple(String, Date))}))"
)


_MARK_HOURS_CHANGED = """
INSERT INTO report_hours_changes (tenant_id, inbox_id, changed_at)
VALUES ({tenant:String}, {inbox:String}, toUInt64(toUnixTimestamp64Micro(now64(6))))"""


async def mark_hours_changed(store: Store, tenant_id: str, inbox_id: str) -> None:
    """Record that ``inbox_id``'s business hours changed (call before and after writing them).

    Every computation made until then holds that inbox's business seconds under
    the old hours: reports take them from :func:`write_hours_fix` or the items,
    and the refresher re-computes the tenant's days. Marking before the write too means a report
    that reads the hours while they change already treats the inbox as changed,
    whichever hours it reads (the mark after it makes the report run again).
    """
    await store.command(_MARK_HOURS_CHANGED, {"tenant": tenant_id, "inbox": inbox_id})


_COMPUTATIONS_BEFORE = """
SELECT day, max(computed_at) AS c FROM report_days WHERE tenant_id = {tenant:String}
GROUP BY day HAVING c > 0 AND c <= {version:UInt64} ORDER BY day"""

_WRITE_FIX = """
INSERT INTO report_hours_fix (tenant_id, version, writer, day, computed_at, hour, kind, inbox_id,
                              team_id, agents, agent, bh_n, bh_total, bh_vals, items)
SELECT tenant_id, {version:UInt64}, {writer:UInt64}, day, computed_at, hour, kind, inbox_id,
       team_id, agents, agent, length(bv), arraySum(bv), bv, bitems
FROM ({rows})"""

# Each whole day's rows too (hour 24), from its hours: what reports read for whole days.
_WRITE_FIX_DAYS = """
INSERT INTO report_hours_fix (tenant_id, version, writer, day, computed_at, hour, kind, inbox_id,
                              team_id, agents, agent, bh_n, bh_total, bh_vals, items)
SELECT tenant_id, version, writer, day, computed_at, 24, kind, inbox_id, team_id, agents, agent,
       sum(bh_n), sum(bh_total), groupArrayArray(bh_vals), []
FROM report_hours_fix
WHERE tenant_id = {tenant:String} AND version = {version:UInt64} AND writer = {writer:UInt64}
  AND hour < 24
  AND (day, computed_at) IN (SELECT arrayJoin({covered:Array(Tuple(Date, UInt64))}))
GROUP BY tenant_id, version, writer, day, computed_at, kind, inbox_id, team_id, agents, agent"""

_FIX_LOCKS: weakref.WeakKeyDictionary[Store, asyncio.Lock] = weakref.WeakKeyDictionary()

_WRITE_FIXED = """
INSERT INTO report_hours_fixed (tenant_id, version, writer, covered)
VALUES ({tenant:String}, {version:UInt64}, {writer:UInt64}, {covered:Array(Tuple(Date, UInt64))})"""


async def write_hours_fix(store: Store, tenant_id: str) -> int:
    """Write the changed inboxes' business seconds of the tenant's current computations.

    After a business-hours change (:func:`mark_hours_changed`), two statements
    for all days: until the refresher has re-computed them, reports read these
    instead of deriving the values from the items in every call. Written for the
    tenant's latest change (marks read before the hours: a change after that
    makes them unused), for the computations not covered yet (the refresher
    calls it every round: a computation written after the last call); returns
    how many it covered. Serialized in the process (replicas: see ``writer``).
    """
    async with _FIX_LOCKS.setdefault(store, asyncio.Lock()):
        changes = await hours_changes(store, tenant_id)
        if not changes:
            return 0
        version = max(at for _, at in changes)
        hours = await business_hours(store, tenant_id)
        rows = await store.query(_COMPUTATIONS_BEFORE, {"tenant": tenant_id, "version": version})
        done = await fixed(store, tenant_id, version)
        todo = [(day, int(c)) for day, c in rows if (day, int(c)) not in done]
        if not todo:
            return 0
        sql, parameters = hours_fix_sql(hours, changes)
        # Rows are read by (computation, writer): another replica's write of the same
        # computations at the same time is never added to this one.
        writer = secrets.randbits(63)
        given = {"tenant": tenant_id, "version": version, "writer": writer, "covered": todo}
        await store.command(_WRITE_FIX.replace("{rows}", sql), {**parameters, **given})
        await store.command(_WRITE_FIX_DAYS, given)
        await store.command(_WRITE_FIXED, given)
        return len(todo)


async def mark_tenant_dirty(store: Store, tenant_id: str) -> None:
    """Make every pre-aggregated day of ``tenant_id`` (every hour) live until re-computed."""
    await store.command(_MARK_TENANT_HOURS, {"tenant": tenant_id})
    await store.command(_MARK_TENANT, {"tenant": tenant_id})


Day = tuple[str, dt.date]
"""(tenant_id, UTC day)."""


async def conversation_days(store: Store, keys: Iterable[tuple[str, str]]) -> list[Day]:
    """Every day these conversations' values can fall on (read from their summaries)."""
    ordered = sorted(set(keys))
    if not ordered:
        return []
    rows = await store.query(_CONVERSATION_DAYS, {"keys": ordered})
    return [(str(t), d) for t, d in rows]


async def mark_days(store: Store, days: Sequence[Day]) -> None:
    """Mark ``days`` dirty (every hour of them): reports compute them live until re-computed."""
    if days:
        await store.command(_MARK_DAYS_HOURS, {"days": list(days)})
        await store.command(_MARK_DAYS, {"days": list(days)})


async def drop_days(store: Store, days: Sequence[Day], cluster: str | None = None) -> None:
    """Mark ``days`` dirty and delete every computation of them (after an erasure).

    Call once the erased conversations' summaries are deleted: a computation
    that read them before is deleted here, and stamped before this mark.
    """
    if days:
        await mark_days(store, days)
        for table in _TABLES:
            statement = render(_DELETE_DAYS.replace("{table}", table), cluster)
            assert statement is not None
            await store.command(statement, {"days": list(days)})


async def refresh(
    store: Store,
    cluster: str | None = None,
    *,
    delete_old: bool = True,
    refreshed: set[str] | None = None,
) -> int:
    """Re-compute every dirty day; how many were.

    With ``delete_old`` false, the computations replaced are left for
    :func:`delete_replaced` and the tenants refreshed are added to ``refreshed``.
    """
    rows = await store.query(_DIRTY)
    stale = await store.query(_HOURS_STALE)
    for tenant_id in sorted({str(t) for t, _ in stale}):
        await write_hours_fix(store, tenant_id)
    rows = [*rows, *stale[:HOURS_STALE_DAYS]]
    by_tenant: dict[str, list[dt.date]] = defaultdict(list)
    for tenant_id, day in rows:
        by_tenant[str(tenant_id)].append(day)
    margin = 0 if store.exclusive else int(SERVER_MARGIN * 1e6)
    for tenant_id, days in by_tenant.items():
        for day in days:
            # The id first: whatever changes after it is read marks the day dirty again.
            computed = int((await store.query(_NOW))[0][0]) - margin
            # Hours read after the id: a change written before it is seen here,
            # one written after it marks the tenant's days dirty again.
            hours = await business_hours(store, tenant_id)
            start = (day - dt.date(1970, 1, 1)).days * _DAY_MS
            items, parameters = items_sql(hours, [(start, start + _DAY_MS)])
            await store.command(
                _WRITE_HOURS.replace("{items}", items),
                {
                    **parameters,
                    "tenant": tenant_id,
                    "computed": computed,
                    "durations": list(DURATION_KINDS),
                },
            )
            await store.command(_WRITE_DAY, {"tenant": tenant_id, "day": day, "computed": computed})
            await store.command(_STAMP, {"tenant": tenant_id, "day": day, "computed": computed})
            REPORT_DAYS_REFRESHED.inc()
    if refreshed is not None:
        refreshed.update(by_tenant)
    if by_tenant and delete_old:
        await delete_replaced(store, sorted(by_tenant), cluster)
    return len(rows)


async def delete_replaced(store: Store, tenants: list[str], cluster: str | None = None) -> None:
    """Delete the replaced computations of ``tenants`` made more than :data:`KEEP_OLD` s ago.

    And the business seconds written for a business-hours change that a later
    change replaced (reports only read those of the latest).
    """
    now = int((await store.query(_NOW))[0][0])
    old = await store.query(_OLD, {"tenants": tenants, "before": now - int(KEEP_OLD * 1e6)})
    if old:
        for table in _TABLES:
            statement = render(_DELETE_OLD.replace("{table}", table), cluster)
            assert statement is not None
            await store.command(statement, {"old": [(str(t), d, int(c)) for t, d, c in old]})
    latest = await store.query(_LATEST_FIX, {"tenants": tenants})
    if latest and any(int(n) for _, _, n in latest):
        statement = render(_DELETE_OLD_FIX, cluster)
        assert statement is not None
        await store.command(
            statement, {"tenants": tenants, "latest": [(str(t), int(v)) for t, v, _ in latest]}
        )


class DailyRefresher:
    """Runs :func:`refresh` every ``interval`` seconds in the background until stopped."""

    def __init__(self, store: Store, interval: float, cluster: str | None = None) -> None:
        self._store = store
        self._interval = interval
        self._cluster = cluster
        self._task: asyncio.Task[None] | None = None
        self._replaced: set[str] = set()  # tenants with computations to delete
        self._cleaned = time.monotonic()

    def start(self) -> None:
        """Start refreshing (the first round at once)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="report-daily")

    async def _run(self) -> None:
        while True:
            try:
                with REPORT_REFRESH_SECONDS.time():
                    days = await refresh(
                        self._store, self._cluster, delete_old=False, refreshed=self._replaced
                    )
                    if self._replaced and time.monotonic() - self._cleaned >= CLEANUP_INTERVAL:
                        await delete_replaced(self._store, sorted(self._replaced), self._cluster)
                        self._replaced.clear()
                        self._cleaned = time.monotonic()
                    stale = await self._store.query(f"SELECT count() FROM ({_DIRTY})")
                REPORT_DAYS_STALE.set(int(stale[0][0]))
                if days:
                    log.debug("report_days_refreshed", days=days)
            except Exception as exc:  # retried next round; reports stay exact meanwhile
                log.warning("report_days_refresh_failed", error=repr(exc))
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """Stop after the statement in progress."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
