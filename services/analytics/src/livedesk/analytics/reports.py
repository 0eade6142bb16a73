"""The report queries: every metric of ``docs/metrics.md``, computed in ClickHouse.

Every report reads ``conversation_summary`` (migration 0004): one row per
created conversation, holding its inbox, its team (the last non-empty team of
its lifecycle events), every agent it was assigned to, its episodes (each
start with its first assignment and first agent message), resolves, ratings,
answered visitor messages and live waiting state, all derived from the
events by their own times, so neither duplicates nor arrival order change
it. The ingester keeps each row current (see ``summary.py``); reports read
with FINAL, which on these few, mostly merged rows costs little. The
filters (inbox, team, agent) select conversations on those rows. From
each, the report derives *items* ``(agent, kind, seconds, business_seconds)``:

====================  ==========================================  ======================
kind                  one per                                     agent
====================  ==========================================  ======================
``created``           conversation created in the range           (none)
``handled``           agent assigned to it in the range           that agent
``wait``              episode started in the range and assigned   agent assigned
``first_response``    episode started in the range and answered   sender of the answer
``resolution``        resolve in the range (each one)             agent when resolved
``resolved``          conversation with a resolve in the range    agent of the last one
``rated_resolved``    ... that also has a rating                  agent of the last one
``rating``            rating submitted in the range (1..5)        agent rated
====================  ==========================================  ======================

which are then grouped by the report's key (nothing, inbox, team, agent).
``business_seconds`` is -1 where the inbox has no business hours. Business
seconds are computed at query time from the stored instants, so a change of
business hours applies to past reports at once.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from livedesk.analytics.store import Store

__all__ = [
    "DURATIONS",
    "BusinessHours",
    "Interval",
    "ReportFilter",
    "breakdown",
    "business_hours",
    "heatmap",
    "live",
    "overview",
    "tenant_time_zone",
    "valid_time_zone",
    "volume",
]

Interval = Literal["hour", "day", "week"]
GroupBy = Literal["inbox", "team", "agent"]

DURATIONS: tuple[str, ...] = ("wait", "first_response", "resolution")
"""Duration metrics of every breakdown (reply time is in the overview only)."""

_WEEK = 7 * 86400
# 1970-01-05, the first Monday after the epoch: week positions count from Monday 00:00.
_MONDAY = 4 * 86400
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")
_ITEMS_TYPE = "Array(Tuple(String, String, Float64, Float64))"


def valid_time_zone(name: str) -> bool:
    """True when ``name`` is an IANA time zone that is safe to quote in SQL."""
    if not _ZONE_NAME.match(name) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class ReportFilter:
    """What every report is about: a tenant, a half-open time range, optional filters."""

    tenant_id: str
    start: dt.datetime
    end: dt.datetime
    inbox_id: str = ""
    team_id: str = ""
    agent_id: str = ""

    def parameters(self) -> dict[str, Any]:
        """The query parameters every report query binds."""
        return {
            "tenant": self.tenant_id,
            "from_ms": _ms(self.start),
            "to_ms": _ms(self.end),
            "inbox": self.inbox_id,
            "team": self.team_id,
            "agent": self.agent_id,
        }


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """An inbox's weekly business hours: ``[start, end)`` seconds after Monday 00:00 local."""

    inbox_id: str
    time_zone: str
    windows: tuple[tuple[int, int], ...]

    @property
    def seconds_per_week(self) -> int:
        """Business seconds in one week."""
        return sum(end - start for start, end in self.windows)


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


_F = "fromUnixTimestamp64Milli({from_ms:Int64}, 'UTC')"
_T = "fromUnixTimestamp64Milli({to_ms:Int64}, 'UTC')"


def _secs(a: str, b: str) -> str:
    return f"(toUnixTimestamp64Milli({b}) - toUnixTimestamp64Milli({a})) / 1000"


def _business_calendar(hours: BusinessHours, t: str) -> str:
    """SQL for business seconds from the epoch's first Monday to ``t``, wall-clock time.

    The windows are unrolled into one sum (no array per value): this runs once
    per duration end point of every conversation in the range.
    """
    assert valid_time_zone(hours.time_zone)
    wall = (
        f"(toUnixTimestamp64Milli({t}) / 1000"
        f" + timeZoneOffset(toTimeZone({t}, '{hours.time_zone}')) - {_MONDAY})"
    )
    weeks = f"floor({wall} / {_WEEK})"
    into_week = f"({wall} - {weeks} * {_WEEK})"
    parts = [
        f"least(greatest({into_week} - {int(s)}, 0.), {int(e) - int(s)}.)" for s, e in hours.windows
    ] or ["0."]
    return f"({weeks} * {hours.seconds_per_week} + {' + '.join(parts)})"


def _by_inbox(
    hours: Sequence[BusinessHours], value: Callable[[BusinessHours], str], default: str
) -> tuple[str, dict[str, Any]]:
    """SQL choosing, by the row's ``inbox_id``, ``value(its business hours)``, else ``default``."""
    branches: list[str] = []
    parameters: dict[str, Any] = {}
    for i, h in enumerate(hours):
        if not h.windows:
            continue
        parameters[f"bh_inbox_{i}"] = h.inbox_id
        branches.append(f"inbox_id = {{bh_inbox_{i}:String}}, {value(h)}")
    if not branches:
        return default, {}
    return f"multiIf({', '.join(branches)}, {default})", parameters


def _business_seconds(hours: Sequence[BusinessHours], a: str, b: str) -> tuple[str, dict[str, Any]]:
    """SQL for the business seconds between ``a`` and ``b`` in the conversation's inbox."""
    return _by_inbox(
        hours,
        lambda h: f"toFloat64({_business_calendar(h, b)} - {_business_calendar(h, a)})",
        "-1.",
    )


_CONV_FILTER = """
      AND ({inbox:String} = '' OR inbox_id = {inbox:String})
      AND ({team:String} = '' OR team_id = {team:String})
      AND ({agent:String} = '' OR has(agents, {agent:String}))"""

# The summaries (migration 0004) of the tenant's conversations counted in the
# range, filtered. first_at / last_at span every time a report counts a
# conversation at, so conversations with nothing in the range are skipped by
# their min/max indexes without being read.
_SUMMARY = f"""
    FROM conversation_summary FINAL
    WHERE tenant_id = {{tenant:String}} AND last_at >= {_F} AND first_at < {_T} {_CONV_FILTER}"""


def _items_sql(hours: Sequence[BusinessHours]) -> tuple[str, dict[str, Any]]:
    """SQL yielding ``inbox_id``, ``team_id`` and ``items`` (see the module docstring)."""
    bh_wait, p1 = _business_seconds(hours, "ep.1", "ep.2")
    bh_reply, _ = _business_seconds(hours, "ep.1", "ep.4")
    bh_res, _ = _business_seconds(hours, "created_at", "r.1")
    empty = f"CAST([] AS {_ITEMS_TYPE})"
    sql = f"""
SELECT
    inbox_id, team_id,
    arrayFilter(r -> r.1 >= {_F} AND r.1 < {_T}, resolves) AS res_in,
    arrayFilter(ep -> ep.1 >= {_F} AND ep.1 < {_T}, episodes) AS ep_in,
    arrayConcat(
        if(created_at >= {_F} AND created_at < {_T},
           CAST([('', 'created', 1., -1.)] AS {_ITEMS_TYPE}), {empty}),
        arrayMap(a -> (a, 'handled', 1., -1.), arrayDistinct(arrayMap(x -> x.2,
            arrayFilter(x -> x.1 >= {_F} AND x.1 < {_T} AND x.2 != '', assigns)))),
        arrayMap(ep -> (ep.3, 'wait', {_secs("ep.1", "ep.2")}, {bh_wait}),
            arrayFilter(ep -> ep.2 >= ep.1, ep_in)),
        arrayMap(ep -> (ep.5, 'first_response', {_secs("ep.1", "ep.4")}, {bh_reply}),
            arrayFilter(ep -> ep.4 >= ep.1, ep_in)),
        arrayMap(r -> (r.2, 'resolution', {_secs("created_at", "r.1")}, {bh_res}), res_in),
        if(length(res_in) > 0,
           [(res_in[-1].2, 'resolved', 1., -1.)], {empty}),
        if(length(res_in) > 0 AND length(ratings) > 0,
           [(res_in[-1].2, 'rated_resolved', 1., -1.)], {empty}),
        arrayMap(r -> (r.3, 'rating', toFloat64(r.2), -1.),
            arrayFilter(r -> r.1 >= {_F} AND r.1 < {_T}, ratings))
    ) AS items
{_SUMMARY}"""
    return sql, p1


def _stats_columns(kind: str) -> str:
    bh = f"kind = '{kind}' AND bh >= 0"
    return (
        f"countIf(kind = '{kind}'), avgIf(v, kind = '{kind}'), "
        f"quantilesExactInclusiveIf(0.5, 0.9)(v, kind = '{kind}'), "
        f"countIf({bh}), avgIf(bh, {bh}), quantilesExactInclusiveIf(0.5, 0.9)(bh, {bh})"
    )


def _business_array(
    hours: Sequence[BusinessHours], var: str, array: str, a: str, b: str
) -> tuple[str, dict[str, Any]]:
    """SQL: business seconds ``a`` -> ``b`` for each ``var`` of ``array``, in the row's inbox.

    An empty array where the inbox has no business hours, so only rows of
    inboxes with hours pay for the calendar arithmetic.
    """
    return _by_inbox(
        hours,
        lambda h: (
            f"arrayMap({var} -> toFloat64("
            f"{_business_calendar(h, b)} - {_business_calendar(h, a)}), {array})"
        ),
        "CAST([] AS Array(Float64))",
    )


def _array_stats(values: str) -> str:
    return (
        f"sum(length({values})), avgArray({values}), "
        f"quantilesExactInclusiveArray(0.5, 0.9)({values})"
    )


def _metrics_sql(key: str, hours: Sequence[BusinessHours]) -> tuple[str, dict[str, Any]]:
    """One row per ``key`` (a column of the summary, or ``''``): the layout of
    :func:`_row_to_metrics`, then reply-time statistics.

    Each conversation's values are arrays aggregated with ``-Array``
    combinators: no row per value is ever made.
    """
    bh_wait, parameters = _business_array(hours, "ep", "ep_w", "ep.1", "ep.2")
    bh_first, _ = _business_array(hours, "ep", "ep_f", "ep.1", "ep.4")
    bh_res, _ = _business_array(hours, "r", "res_in", "created_at", "r.1")
    bh_reply, _ = _business_array(hours, "x", "rep_in", "x.1", "x.2")
    in_range = f"x -> x.1 >= {_F} AND x.1 < {_T}"
    stats = ",\n    ".join(
        f"{_array_stats(name)}, {_array_stats(name + '_bh')}"
        for name in ("wait", "first", "res", "reply")
    )
    sql = f"""
SELECT
    {key} AS key,
    countIf(created_at >= {_F} AND created_at < {_T}),
    countIf(length(res_in) > 0),
    sum(length(arrayDistinct(arrayMap(x -> x.2,
        arrayFilter(x -> x.1 >= {_F} AND x.1 < {_T} AND x.2 != '', assigns))))),
    countIf(length(res_in) > 0 AND length(ratings) > 0),
    sum(length(rate_in)),
    sum(arrayCount(x -> x.2 >= 4, rate_in)),
    {stats}
FROM (
    SELECT
        {key if key != "''" else "1"}, created_at, assigns, ratings,
        arrayFilter({in_range}, episodes) AS ep_in,
        arrayFilter(ep -> ep.2 >= ep.1, ep_in) AS ep_w,
        arrayFilter(ep -> ep.4 >= ep.1, ep_in) AS ep_f,
        arrayFilter({in_range}, resolves) AS res_in,
        arrayFilter({in_range}, ratings) AS rate_in,
        arrayFilter({in_range}, replies) AS rep_in,
        arrayMap(ep -> {_secs("ep.1", "ep.2")}, ep_w) AS wait,
        arrayMap(ep -> {_secs("ep.1", "ep.4")}, ep_f) AS first,
        arrayMap(r -> {_secs("created_at", "r.1")}, res_in) AS res,
        arrayMap(x -> {_secs("x.1", "x.2")}, rep_in) AS reply,
        {bh_wait} AS wait_bh,
        {bh_first} AS first_bh,
        {bh_res} AS res_bh,
        {bh_reply} AS reply_bh
    {_SUMMARY}
)
GROUP BY key
ORDER BY key"""
    return sql, parameters


def _reply_stats(row: Sequence[Any]) -> dict[str, Any]:
    cells = row[-6:]
    stats = _stats(*cells[:3])
    stats["business_hours"] = _stats(*cells[3:])
    return stats


def _grouped_sql(key: str, hours: Sequence[BusinessHours]) -> tuple[str, dict[str, Any]]:
    items, parameters = _items_sql(hours)
    stats = ",\n    ".join(_stats_columns(kind) for kind in DURATIONS)
    sql = f"""
SELECT
    {key} AS key,
    countIf(kind = 'created'), countIf(kind = 'resolved'), countIf(kind = 'handled'),
    countIf(kind = 'rated_resolved'), countIf(kind = 'rating'), countIf(kind = 'rating' AND v >= 4),
    {stats}
FROM (
    SELECT inbox_id, team_id, it.1 AS item_agent, it.2 AS kind, it.3 AS v, it.4 AS bh
    FROM ({items})
    ARRAY JOIN items AS it
)
GROUP BY key
ORDER BY key"""
    return sql, parameters


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else round(number, 3)


def _stats(count: Any, avg: Any, quantiles: Sequence[Any]) -> dict[str, Any]:
    return {
        "count": int(count),
        "avg": _number(avg),
        "p50": _number(quantiles[0]),
        "p90": _number(quantiles[1]),
    }


def _row_to_metrics(row: Sequence[Any]) -> dict[str, Any]:
    created, resolved, handled, rated_resolved, ratings, satisfied = (int(x) for x in row[1:7])
    result: dict[str, Any] = {
        "conversations_created": created,
        "conversations_resolved": resolved,
        "conversations_handled": handled,
    }
    offset = 7
    for kind in DURATIONS:
        cells = row[offset : offset + 6]
        offset += 6
        stats = _stats(*cells[:3])
        stats["business_hours"] = _stats(*cells[3:])
        result[f"{kind}_time"] = stats
    result["csat"] = {
        "ratings": ratings,
        "satisfied": satisfied,
        "score": round(satisfied / ratings, 4) if ratings else None,
        "resolved_conversations": resolved,
        "rated_conversations": rated_resolved,
        "response_rate": round(rated_resolved / resolved, 4) if resolved else None,
    }
    return result


def _empty_metrics() -> dict[str, Any]:
    zero: list[Any] = [0, 0, 0, 0, 0, 0, 0]
    for _ in DURATIONS:
        zero += [0, math.nan, [math.nan, math.nan], 0, math.nan, [math.nan, math.nan]]
    return _row_to_metrics(["", *zero[1:]])


async def business_hours(store: Store, tenant_id: str) -> list[BusinessHours]:
    """The business hours every inbox of ``tenant_id`` has (enabled ones only)."""
    rows = await store.query(
        "SELECT inbox_id, time_zone, starts, ends FROM inbox_business_hours FINAL "
        "WHERE tenant_id = {tenant:String} AND enabled = 1 ORDER BY inbox_id",
        parameters={"tenant": tenant_id},
    )
    return [
        BusinessHours(str(inbox), str(tz), tuple(zip(map(int, s), map(int, e), strict=True)))
        for inbox, tz, s, e in rows
        if valid_time_zone(str(tz))
    ]


async def tenant_time_zone(store: Store, tenant_id: str) -> str:
    """The tenant's time zone; UTC until an admin sets one."""
    rows = await store.query(
        "SELECT time_zone FROM tenant_settings FINAL WHERE tenant_id = {tenant:String}",
        parameters={"tenant": tenant_id},
    )
    zone = str(rows[0][0]) if rows else "UTC"
    return zone if valid_time_zone(zone) else "UTC"


async def overview(
    store: Store, flt: ReportFilter, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Counts, wait / first response / resolution / reply times and CSAT of the range."""
    hours = await business_hours(store, flt.tenant_id)
    sql, parameters = _metrics_sql("''", hours)
    rows = await store.query(sql, {**flt.parameters(), **parameters}, settings)
    metrics = _row_to_metrics(rows[0]) if rows else _empty_metrics()
    metrics.pop("conversations_handled")
    empty_reply = _empty_metrics()["wait_time"]
    metrics["reply_time"] = _reply_stats(rows[0]) if rows else empty_reply
    return metrics


async def breakdown(
    store: Store, flt: ReportFilter, by: GroupBy, settings: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The overview's metrics for each inbox, team or agent (rows without a key left out)."""
    hours = await business_hours(store, flt.tenant_id)
    if by == "agent":
        # Values of one conversation go to different agents: a row per item.
        sql, parameters = _grouped_sql("item_agent", hours)
    else:
        sql, parameters = _metrics_sql(f"{by}_id", hours)
    rows = await store.query(sql, {**flt.parameters(), **parameters}, settings)
    result = []
    for row in rows:
        if row[0] == "":
            continue
        metrics = _row_to_metrics(row)
        if by != "agent":
            metrics.pop("conversations_handled")
        result.append({f"{by}_id": row[0], **metrics})
    return result


_BUCKETS: dict[str, str] = {
    "hour": "toStartOfHour(toTimeZone(t, '{tz}'))",
    "day": "toStartOfDay(toTimeZone(t, '{tz}'))",
    "week": "toDateTime(toMonday(toTimeZone(t, '{tz}')), '{tz}')",
}


async def volume(
    store: Store,
    flt: ReportFilter,
    interval: Interval,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Conversations created and resolved per hour, day or week of the tenant's time zone."""
    tz = await tenant_time_zone(store, flt.tenant_id)
    bucket = _BUCKETS[interval].format(tz=tz)
    sql = f"""
SELECT toUnixTimestamp({bucket}) AS b, countIf(kind = 'created'), countIf(kind = 'resolved')
FROM (
    SELECT it.1 AS t, it.2 AS kind
    FROM (
        SELECT arrayConcat([(created_at, 'created')],
                           arrayMap(r -> (r.1, 'resolved'), resolves)) AS its
        {_SUMMARY}
    )
    ARRAY JOIN its AS it
)
WHERE t >= {_F} AND t < {_T}
GROUP BY b ORDER BY b"""
    rows = await store.query(sql, flt.parameters(), settings)
    counts = {int(b): (int(c), int(r)) for b, c, r in rows}
    zone = ZoneInfo(tz)
    series = []
    for start in _buckets(flt.start, flt.end, interval, zone):
        created, resolved = counts.pop(int(start.timestamp()), (0, 0))
        series.append({"start": start.isoformat(), "created": created, "resolved": resolved})
    return {"time_zone": tz, "interval": interval, "series": series}


def _buckets(
    start: dt.datetime, end: dt.datetime, interval: Interval, zone: ZoneInfo
) -> list[dt.datetime]:
    """Every bucket start, in ``zone``, of the buckets overlapping ``[start, end)``."""
    local = start.astimezone(zone)
    if interval == "hour":
        first = local.replace(minute=0, second=0, microsecond=0)
    else:
        first = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if interval == "week":
            first -= dt.timedelta(days=first.weekday())
    result: list[dt.datetime] = []
    current = first
    step = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}.get(
        interval, dt.timedelta(weeks=1)
    )
    while current < end:
        if interval == "hour":
            # Step in UTC so a DST change neither skips nor repeats an hour.
            result.append(current.astimezone(zone))
            current = (current.astimezone(dt.UTC) + step).astimezone(zone)
        else:
            result.append(current)
            # Calendar steps in local time: a day is 23 or 25 hours across DST.
            current = (current.replace(tzinfo=None) + step).replace(tzinfo=zone)
    return result


async def heatmap(
    store: Store, flt: ReportFilter, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Conversations created per weekday (1 = Monday) and hour, in the tenant's time zone."""
    tz = await tenant_time_zone(store, flt.tenant_id)
    sql = f"""
SELECT toDayOfWeek(toTimeZone(created_at, '{tz}')) AS d,
       toHour(toTimeZone(created_at, '{tz}')) AS h,
       count()
{_SUMMARY} AND created_at >= {_F} AND created_at < {_T}
GROUP BY d, h"""
    rows = await store.query(sql, flt.parameters(), settings)
    counts = {(int(d), int(h)): int(n) for d, h, n in rows}
    cells = [
        {"weekday": d, "hour": h, "conversations": counts.get((d, h), 0)}
        for d in range(1, 8)
        for h in range(24)
    ]
    return {"time_zone": tz, "cells": cells}


async def live(
    store: Store,
    tenant_id: str,
    now: dt.datetime,
    inbox_id: str = "",
    team_id: str = "",
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Conversations waiting for an agent now, the longest wait, and agents online.

    A conversation waits from the first event that left it without an agent
    (created, queued, reopened, transferred to a team) after the last one that
    gave it one or closed it (assigned, transferred to an agent, resolved).
    """
    sql = """
SELECT count(), max((toUnixTimestamp64Milli(fromUnixTimestamp64Milli({now_ms:Int64}, 'UTC'))
                     - toUnixTimestamp64Milli(waiting_since)) / 1000)
FROM conversation_summary FINAL
WHERE tenant_id = {tenant:String} AND waiting = 1
  AND ({inbox:String} = '' OR inbox_id = {inbox:String})
  AND ({team:String} = '' OR team_id = {team:String})"""
    parameters = {"tenant": tenant_id, "now_ms": _ms(now), "inbox": inbox_id, "team": team_id}
    rows = await store.query(sql, parameters, settings)
    waiting = int(rows[0][0]) if rows else 0
    agents = await store.query(
        """
SELECT countIf(status = 'online') FROM (
    SELECT agent_id, argMax(status, (occurred_at, event_id)) AS status
    FROM agent_status FINAL WHERE tenant_id = {tenant:String} GROUP BY agent_id
)""",
        {"tenant": tenant_id},
        settings,
    )
    return {
        "at": now.isoformat(),
        "conversations_waiting": waiting,
        "longest_wait": max(0.0, round(float(rows[0][1]), 3)) if waiting else None,
        "agents_online": int(agents[0][0]) if agents else 0,
    }
