"""The report queries: every metric of ``docs/metrics.md``, computed in ClickHouse.

Each report is one or two SQL queries over the typed tables of migration
0002, all read with FINAL so a duplicated event never counts twice, and all
ordered by event time, so the order events arrived in never matters.

Every report starts from the same per-conversation view (``conv``): the
conversation's inbox (from ``conversation.created``), its team (the last
non-empty team of its lifecycle events), every agent it was assigned to,
the sorted times it was created or reopened (episode starts), assigned
(with agent) and resolved (with agent). The filters (inbox, team, agent)
select conversations on that view. From it, each conversation yields
*items* ``(agent, kind, seconds, business_seconds)``:

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
``business_seconds`` is -1 where the inbox has no business hours.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

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
_FAR = "toDateTime64('2200-01-01 00:00:00', 3, 'UTC')"
_ZERO = "toDateTime64(0, 3, 'UTC')"
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
    """SQL for business seconds from the epoch's first Monday to ``t``, wall-clock time."""
    assert valid_time_zone(hours.time_zone)
    starts = ",".join(str(int(s)) for s, _ in hours.windows) or "0"
    ends = ",".join(str(int(e)) for _, e in hours.windows) or "0"
    wall = (
        f"(toUnixTimestamp64Milli({t}) / 1000"
        f" + timeZoneOffset(toTimeZone({t}, '{hours.time_zone}')) - {_MONDAY})"
    )
    weeks = f"floor({wall} / {_WEEK})"
    return (
        f"({weeks} * {hours.seconds_per_week} + arraySum(arrayMap((s, e) -> "
        f"least(greatest({wall} - {weeks} * {_WEEK} - s, 0.), toFloat64(e - s)), "
        f"[{starts}], [{ends}])))"
    )


def _business_seconds(hours: Sequence[BusinessHours], a: str, b: str) -> tuple[str, dict[str, Any]]:
    """SQL for the business seconds between ``a`` and ``b`` in the conversation's inbox."""
    if not hours:
        return "-1.", {}
    branches: list[str] = []
    parameters: dict[str, Any] = {}
    for i, h in enumerate(hours):
        if not h.windows:
            continue
        parameters[f"bh_inbox_{i}"] = h.inbox_id
        branches.append(
            f"inbox_id = {{bh_inbox_{i}:String}}, "
            f"toFloat64({_business_calendar(h, b)} - {_business_calendar(h, a)})"
        )
    if not branches:
        return "-1.", {}
    return f"multiIf({', '.join(branches)}, -1.)", parameters


_CONV_FILTER = """
      AND ({inbox:String} = '' OR inbox_id = {inbox:String})
      AND ({team:String} = '' OR team_id = {team:String})
      AND ({agent:String} = '' OR has(agents, {agent:String}))"""


def _conv(scope: str) -> str:
    """The per-conversation view of the conversations ``scope`` selects, filtered."""
    return f"""
    SELECT
        conversation_id,
        minIf(occurred_at, type = 'conversation.created') AS created_at,
        argMinIf(inbox_id, occurred_at, type = 'conversation.created') AS inbox_id,
        argMaxIf(team_id, occurred_at, team_id != '') AS team_id,
        groupUniqArrayIf(agent_id, type = 'conversation.assigned' AND agent_id != '') AS agents,
        arraySort(groupArrayIf(occurred_at,
            type IN ('conversation.created', 'conversation.reopened'))) AS starts,
        arraySort(groupArrayIf((occurred_at, agent_id), type = 'conversation.assigned')) AS assigns,
        arraySort(groupArrayIf((occurred_at, agent_id), type = 'conversation.resolved')) AS resolves
    FROM conversation_events FINAL
    WHERE tenant_id = {{tenant:String}} AND conversation_id IN ({scope})
    GROUP BY conversation_id
    HAVING created_at > {_ZERO} {_CONV_FILTER}"""


# Conversations with a lifecycle event or a rating in the range.
_SCOPE = f"""
        SELECT conversation_id FROM conversation_events
        WHERE tenant_id = {{tenant:String}} AND occurred_at >= {_F} AND occurred_at < {_T}
        UNION DISTINCT
        SELECT conversation_id FROM csat
        WHERE tenant_id = {{tenant:String}} AND occurred_at >= {_F} AND occurred_at < {_T}"""


def _items_sql(hours: Sequence[BusinessHours]) -> tuple[str, dict[str, Any]]:
    """SQL yielding ``conv`` columns plus ``items`` (see the module docstring)."""
    bh_ep_assign, p1 = _business_seconds(hours, "starts[ep[j]]", "ep_assign[j].1")
    bh_ep_reply, _ = _business_seconds(hours, "starts[ep[j]]", "ep_reply[j].1")
    bh_res, _ = _business_seconds(hours, "created_at", "r.1")
    empty = f"CAST([] AS {_ITEMS_TYPE})"
    sql = f"""
WITH
conv AS ({_conv(_SCOPE)}),
am AS (
    SELECT conversation_id, arraySort(groupArray((created_at, seq, sender_id))) AS agent_msgs
    FROM messages FINAL
    WHERE tenant_id = {{tenant:String}} AND sender_kind = 'agent' AND created_at >= {_F}
      AND conversation_id IN ({_SCOPE})
    GROUP BY conversation_id
),
cs AS (
    SELECT conversation_id, groupArray((occurred_at, rating, agent_id)) AS ratings
    FROM csat FINAL
    WHERE tenant_id = {{tenant:String}} AND conversation_id IN ({_SCOPE})
    GROUP BY conversation_id
),
eps AS (
    SELECT
        conversation_id, created_at, inbox_id, team_id, agents, starts, assigns, resolves,
        am.agent_msgs AS agent_msgs,
        cs.ratings AS ratings,
        arrayFilter(i -> starts[i] >= {_F} AND starts[i] < {_T}, arrayEnumerate(starts)) AS ep,
        arrayMap(i -> if(i < length(starts), starts[i + 1], {_FAR}), ep) AS ep_end,
        arrayMap((i, e) -> arrayFirst(x -> x.1 >= starts[i] AND x.1 < e, assigns),
                 ep, ep_end) AS ep_assign,
        arrayMap((i, e) -> arrayFirst(x -> x.1 >= starts[i] AND x.1 < e, agent_msgs),
                 ep, ep_end) AS ep_reply,
        arrayFilter(r -> r.1 >= {_F} AND r.1 < {_T}, resolves) AS res_in,
        arrayFilter(r -> r.1 >= {_F} AND r.1 < {_T}, ratings) AS rated_in
    FROM conv
    LEFT JOIN am USING (conversation_id)
    LEFT JOIN cs USING (conversation_id)
)
SELECT
    inbox_id, team_id,
    arrayConcat(
        if(created_at >= {_F} AND created_at < {_T},
           CAST([('', 'created', 1., -1.)] AS {_ITEMS_TYPE}), {empty}),
        arrayMap(a -> (a, 'handled', 1., -1.), arrayDistinct(arrayMap(x -> x.2,
            arrayFilter(x -> x.1 >= {_F} AND x.1 < {_T} AND x.2 != '', assigns)))),
        arrayMap(j -> (ep_assign[j].2, 'wait', {_secs("starts[ep[j]]", "ep_assign[j].1")},
                       {bh_ep_assign}),
            arrayFilter(j -> ep_assign[j].1 >= starts[ep[j]], arrayEnumerate(ep))),
        arrayMap(j -> (ep_reply[j].3, 'first_response',
                       {_secs("starts[ep[j]]", "ep_reply[j].1")},
                       {bh_ep_reply}),
            arrayFilter(j -> ep_reply[j].1 >= starts[ep[j]], arrayEnumerate(ep))),
        arrayMap(r -> (r.2, 'resolution', {_secs("created_at", "r.1")}, {bh_res}), res_in),
        if(length(res_in) > 0,
           [(res_in[-1].2, 'resolved', 1., -1.)], {empty}),
        if(length(res_in) > 0 AND length(ratings) > 0,
           [(res_in[-1].2, 'rated_resolved', 1., -1.)], {empty}),
        arrayMap(r -> (r.3, 'rating', toFloat64(r.2), -1.), rated_in)
    ) AS items
FROM eps"""
    return sql, p1


def _stats_columns(kind: str) -> str:
    bh = f"kind = '{kind}' AND bh >= 0"
    return (
        f"countIf(kind = '{kind}'), avgIf(v, kind = '{kind}'), "
        f"quantilesExactInclusiveIf(0.5, 0.9)(v, kind = '{kind}'), "
        f"countIf({bh}), avgIf(bh, {bh}), quantilesExactInclusiveIf(0.5, 0.9)(bh, {bh})"
    )


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


async def _reply_time(
    store: Store,
    flt: ReportFilter,
    hours: Sequence[BusinessHours],
    settings: Mapping[str, Any] | None,
) -> dict[str, Any]:
    scope = f"""
        SELECT conversation_id FROM messages
        WHERE tenant_id = {{tenant:String}} AND sender_kind = 'visitor'
          AND created_at >= {_F} AND created_at < {_T}"""
    bh, parameters = _business_seconds(hours, "v_at", "nxt.1")
    sql = f"""
WITH conv AS ({_conv(scope)})
SELECT count(), avg(v), quantilesExactInclusive(0.5, 0.9)(v),
       countIf(bh >= 0), avgIf(bh, bh >= 0), quantilesExactInclusiveIf(0.5, 0.9)(bh, bh >= 0)
FROM (
    SELECT {_secs("v_at", "nxt.1")} AS v, {bh} AS bh
    FROM (
        SELECT vm.created_at AS v_at, c.inbox_id AS inbox_id,
               arrayFirst(m -> m.2 > vm.seq, am.agent_msgs) AS nxt
        FROM (
            SELECT conversation_id, created_at, seq FROM messages FINAL
            WHERE tenant_id = {{tenant:String}} AND sender_kind = 'visitor'
              AND created_at >= {_F} AND created_at < {_T}
        ) AS vm
        INNER JOIN conv AS c ON c.conversation_id = vm.conversation_id
        INNER JOIN (
            SELECT conversation_id, arraySort(x -> x.2, groupArray((created_at, seq))) AS agent_msgs
            FROM messages FINAL
            WHERE tenant_id = {{tenant:String}} AND sender_kind = 'agent' AND created_at >= {_F}
              AND conversation_id IN ({scope})
            GROUP BY conversation_id
        ) AS am ON am.conversation_id = vm.conversation_id
    )
    WHERE nxt.2 > 0
)"""
    rows = await store.query(sql, {**flt.parameters(), **parameters}, settings)
    stats = _stats(*rows[0][:3])
    stats["business_hours"] = _stats(*rows[0][3:])
    return stats


async def overview(
    store: Store, flt: ReportFilter, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Counts, wait / first response / resolution / reply times and CSAT of the range."""
    hours = await business_hours(store, flt.tenant_id)
    sql, parameters = _grouped_sql("''", hours)
    rows = await store.query(sql, {**flt.parameters(), **parameters}, settings)
    metrics = _row_to_metrics(rows[0]) if rows else _empty_metrics()
    metrics.pop("conversations_handled")
    metrics["reply_time"] = await _reply_time(store, flt, hours, settings)
    return metrics


async def breakdown(
    store: Store, flt: ReportFilter, by: GroupBy, settings: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The overview's metrics for each inbox, team or agent (rows without a key left out)."""
    hours = await business_hours(store, flt.tenant_id)
    key = {"inbox": "inbox_id", "team": "team_id", "agent": "item_agent"}[by]
    sql, parameters = _grouped_sql(key, hours)
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
WITH conv AS ({_conv(_SCOPE)})
SELECT toUnixTimestamp({bucket}) AS b, countIf(kind = 'created'), countIf(kind = 'resolved')
FROM (
    SELECT it.1 AS t, it.2 AS kind
    FROM conv
    ARRAY JOIN arrayConcat([(created_at, 'created')],
                           arrayMap(r -> (r.1, 'resolved'), resolves)) AS it
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
WITH conv AS ({_conv(_SCOPE)})
SELECT toDayOfWeek(toTimeZone(created_at, '{tz}')) AS d,
       toHour(toTimeZone(created_at, '{tz}')) AS h,
       count()
FROM conv
WHERE created_at >= {_F} AND created_at < {_T}
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
FROM (
    SELECT
        conversation_id,
        argMinIf(inbox_id, occurred_at, type = 'conversation.created') AS inbox_id,
        argMaxIf(team_id, occurred_at, team_id != '') AS team_id,
        arraySort(groupArray((occurred_at, event_id,
            type IN ('conversation.created', 'conversation.queued', 'conversation.reopened')
            OR (type = 'conversation.transferred' AND agent_id = '')))) AS history,
        arrayMax(arrayMap(x -> if(x.3, toDateTime64(0, 3, 'UTC'), x.1), history)) AS settled_at,
        arrayMin(arrayMap(x -> x.1, arrayFilter(x -> x.3 AND x.1 > settled_at, history)))
            AS waiting_since,
        history[-1].3 AS waiting
    FROM conversation_events FINAL
    WHERE tenant_id = {tenant:String}
    GROUP BY conversation_id
    HAVING waiting
       AND ({inbox:String} = '' OR inbox_id = {inbox:String})
       AND ({team:String} = '' OR team_id = {team:String})
)"""
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
