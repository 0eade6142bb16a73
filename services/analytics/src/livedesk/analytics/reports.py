"""The report queries: every metric of ``docs/metrics.md``, computed in ClickHouse.

Every metric is computed from ``conversation_summary`` (migration 0004): one
row per created conversation, holding its inbox, its team (the last non-empty
team of its lifecycle events), every agent it was assigned to, its episodes
(each start with its first assignment and first agent message), resolves,
ratings, answered visitor messages and live waiting state, all derived from
the events by their own times, so neither duplicates nor arrival order change
it. The ingester keeps each row current (see ``summary.py``). From each
summary :func:`items_sql` derives *items* (kind, instant, agent, value,
business seconds), and a report groups the items counted in its range by its
key (nothing, inbox, team, agent) with exact counts, sums and quantiles.

The items of whole UTC days are also kept pre-aggregated per day
(``report_daily``, migration 0006, written by ``daily.py``): counts, sums and
every duration value per (inbox, team, agents, item agent, kind). A report
reads the range's whole days whose pre-aggregate is current (``report_days``:
computed after the last change of any of their summaries) from there, the
whole UTC hours of its partial first and last days from the same
computation's per-hour rows (``report_hourly``, migration 0007), the partial
hours at its ends from those rows' items whose instant is inside the range
(migration 0008), the hours of days changed since their last computation that
did not change themselves (``report_hours``) from that computation too, and
computes the rest (the changed hours: in a live system, the current one)
live from the summaries, in the same query.
Both give the same items, so the numbers are those of a fully live
computation. Business seconds of the live part are computed at query time;
those of the pre-aggregates with the hours current when they were computed.
A change of an inbox's business hours (``report_hours_changes``) leaves the
days pre-aggregated: until they are re-computed, the business seconds of that
inbox's rows computed before the change are derived again from the rows'
items under the current hours (every other value of those rows, and every
other inbox's rows, does not depend on the hours), so a change applies to
past reports at once.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import itertools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from livedesk.analytics.metrics import REPORT_REPLANS

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from livedesk.analytics.store import Store

__all__ = [
    "DURATIONS",
    "BusinessHours",
    "Interval",
    "ReportFilter",
    "breakdown",
    "business_hours",
    "fixed",
    "heatmap",
    "hours_changes",
    "hours_fix_sql",
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


def _business_calendar(zone: int, time_zone: str, t: str) -> str:
    """SQL for business seconds from the epoch's first Monday to ``t``, wall-clock time.

    In the row's inbox, one of those of :func:`_by_zone`'s time zone ``zone``
    (named ``time_zone``): its windows are parameters, so the SQL is the same
    size whatever the number of inboxes and windows (its analysis is most of
    the cost of a report computing business seconds: unrolled per inbox and
    window, it took ≈ 50 ms per inbox of 5 windows).
    """
    assert valid_time_zone(time_zone)
    wall = (
        f"(toUnixTimestamp64Milli({t}) / 1000"
        f" + timeZoneOffset(toTimeZone({t}, '{time_zone}')) - {_MONDAY})"
    )
    k = f"indexOf({{bh_z{zone}_inboxes:Array(String)}}, inbox_id)"
    # wall is bound once (arrayMap over [wall]): each copy of it costs analysis.
    return (
        f"arrayMap(bh_w -> floor(bh_w / {_WEEK}) * {{bh_z{zone}_week:Array(Float64)}}[{k}]"
        f" + arraySum((bh_s, bh_e) -> least(greatest(bh_w - floor(bh_w / {_WEEK}) * {_WEEK}"
        f" - bh_s, 0.), bh_e - bh_s), {{bh_z{zone}_starts:Array(Array(Float64))}}[{k}],"
        f" {{bh_z{zone}_ends:Array(Array(Float64))}}[{k}]), [{wall}])[1]"
    )


def _by_zone(
    hours: Sequence[BusinessHours], value: Callable[[int, str], str], default: str
) -> tuple[str, dict[str, Any]]:
    """SQL choosing, by the row's ``inbox_id``, ``value(zone, time zone)`` of the time zone
    of its business hours (see :func:`_business_calendar`), else ``default``."""
    zones: dict[str, list[BusinessHours]] = {}
    for h in hours:
        if h.windows:
            zones.setdefault(h.time_zone, []).append(h)
    branches: list[str] = []
    parameters: dict[str, Any] = {}
    for i, (time_zone, inboxes) in enumerate(sorted(zones.items())):
        parameters[f"bh_z{i}_inboxes"] = [h.inbox_id for h in inboxes]
        parameters[f"bh_z{i}_starts"] = [[float(s) for s, _ in h.windows] for h in inboxes]
        parameters[f"bh_z{i}_ends"] = [[float(e) for _, e in h.windows] for h in inboxes]
        parameters[f"bh_z{i}_week"] = [float(h.seconds_per_week) for h in inboxes]
        branches.append(f"has({{bh_z{i}_inboxes:Array(String)}}, inbox_id), {value(i, time_zone)}")
    if not branches:
        return default, {}
    return f"multiIf({', '.join(branches)}, {default})", parameters


def _business_seconds(hours: Sequence[BusinessHours], a: str, b: str) -> tuple[str, dict[str, Any]]:
    """SQL for the business seconds between ``a`` and ``b`` in the conversation's inbox."""
    return _by_zone(
        hours,
        lambda z, tz: f"toFloat64({_business_calendar(z, tz, b)} - {_business_calendar(z, tz, a)})",
        "-1.",
    )


def _business_array(
    hours: Sequence[BusinessHours], var: str, array: str, a: str, b: str
) -> tuple[str, dict[str, Any]]:
    """SQL: business seconds ``a`` -> ``b`` for each ``var`` of ``array``, in the row's inbox.

    An empty array where the inbox has no business hours, so only rows of
    inboxes with hours pay for the calendar arithmetic.
    """
    return _by_zone(
        hours,
        lambda z, tz: (
            f"arrayMap({var} -> toFloat64("
            f"{_business_calendar(z, tz, b)} - {_business_calendar(z, tz, a)}), {array})"
        ),
        "CAST([] AS Array(Float64))",
    )


_CONV_FILTER = """
      AND ({inbox:String} = '' OR inbox_id = {inbox:String})
      AND ({team:String} = '' OR team_id = {team:String})
      AND ({agent:String} = '' OR has(agents, {agent:String}))"""

Window = tuple[int, int]
"""A half-open time window ``[start, end)`` in epoch milliseconds."""

_ITEM_TYPE = "Tuple(String, String, DateTime64(3, 'UTC'), Float64, Float64, DateTime64(3, 'UTC'))"
_NONE = "toDateTime64(0, 3, 'UTC')"
ITEM_KINDS: tuple[str, ...] = (
    "created",
    "episode",
    "handled",
    "wait",
    "first_response",
    "resolution",
    "resolved",
    "rated_resolved",
    "rating",
    "reply",
)
"""Every item kind (see :func:`items_sql`)."""
DURATION_KINDS: tuple[str, ...] = ("wait", "first_response", "resolution", "reply")
"""Kinds whose values are durations (quantiles are taken over them)."""


def _window_sql(
    windows: Sequence[Window], at: str, until: str, name: str = "w"
) -> tuple[str, dict[str, Any]]:
    """SQL true when ``[at, until]`` meets one of ``windows`` (``at = until``: ``at`` is in one).

    Its parameters are named after ``name``.
    """
    parameters: dict[str, Any] = {}
    terms = []
    for i, (start, end) in enumerate(windows):
        parameters[f"{name}{i}s"], parameters[f"{name}{i}e"] = start, end
        terms.append(
            f"({until} >= fromUnixTimestamp64Milli({{{name}{i}s:Int64}}, 'UTC')"
            f" AND {at} < fromUnixTimestamp64Milli({{{name}{i}e:Int64}}, 'UTC'))"
        )
    return "(" + " OR ".join(terms or ["0"]) + ")", parameters


def items_sql(
    hours: Sequence[BusinessHours], windows: Sequence[Window]
) -> tuple[str, dict[str, Any]]:
    """SQL for one row per report *item* counted at an instant inside ``windows``.

    Columns: the conversation's ``inbox_id``, ``team_id``, ``agents``; the
    item's ``agent``, ``kind``, instant ``at``, value ``v`` (seconds for
    durations; for ``rating`` 1 when the rating is 4 or 5, else 0), business
    seconds ``bh`` (-1 where the inbox has no business hours or the kind is
    no duration) and ``link``:

    ==================  ==========================================  =====================
    kind                one per                                     agent
    ==================  ==========================================  =====================
    ``created``         conversation (at its creation)              (none)
    ``episode``         episode start (created or reopened)         (none)
    ``handled``         assignment to an agent                      that agent
    ``wait``            episode with an assignment                  agent assigned
    ``first_response``  episode with an agent message               sender of the message
    ``resolution``      resolve                                     agent when resolved
    ``resolved``        resolve                                     agent when resolved
    ``rated_resolved``  resolve of a conversation with a rating     agent when resolved
    ``rating``          rating                                      agent rated
    ``reply``           answered visitor message                    (none)
    ==================  ==========================================  =====================

    Items that count once per conversation in a range carry the neighbouring
    instant that decides it (``link``, 1970 when there is none): ``handled``
    the previous assignment to the same agent (the item counts when that is
    before the range: the first assignment to the agent inside it), and
    ``resolved`` / ``rated_resolved`` the next resolve (counts when that is at
    or after the range's end: the last resolve inside it, whose agent the
    conversation is attributed to). So grouping items of any set of days,
    then applying the range, gives exactly the per-conversation counts.
    ``daily.py`` groups them per day; reports compute the same values with
    :func:`_live_sql` (arrays per conversation, cheaper).
    """
    bh_wait, parameters = _business_seconds(hours, "ep.1", "ep.2")
    bh_first, _ = _business_seconds(hours, "ep.1", "ep.4")
    bh_res, _ = _business_seconds(hours, "created_at", "r.1")
    bh_reply, _ = _business_seconds(hours, "x.1", "x.2")
    in_summary, p2 = _window_sql(windows, "first_at", "last_at")
    in_items, _ = _window_sql(windows, "it.3", "it.3")
    parameters.update(p2)
    none = _NONE
    resolved = (
        f"arrayMap(i -> (resolves[i].2, '{{kind}}', resolves[i].1, 0., -1.,"
        f" if(i < length(resolves), resolves[i + 1].1, {none})), arrayEnumerate(resolves))"
    )
    sql = f"""
SELECT inbox_id, team_id, agents, it.1 AS agent, it.2 AS kind, it.3 AS at, it.4 AS v,
       it.5 AS bh, it.6 AS link
FROM (
    SELECT inbox_id, team_id, agents, arrayConcat(
        CAST([('', 'created', created_at, 0., -1., {none})] AS Array({_ITEM_TYPE})),
        arrayMap(ep -> ('', 'episode', ep.1, 0., -1., {none}), episodes),
        arrayMap(i -> (assigns[i].2, 'handled', assigns[i].1, 0., -1.,
                       arrayMax(arrayMap(j -> if(j < i AND assigns[j].2 = assigns[i].2,
                                                 assigns[j].1, {none}),
                                         arrayEnumerate(assigns)))),
                 arrayFilter(i -> assigns[i].2 != '', arrayEnumerate(assigns))),
        arrayMap(ep -> (ep.3, 'wait', ep.1, {_secs("ep.1", "ep.2")}, {bh_wait}, {none}),
                 arrayFilter(ep -> ep.2 >= ep.1, episodes)),
        arrayMap(ep -> (ep.5, 'first_response', ep.1, {_secs("ep.1", "ep.4")}, {bh_first},
                        {none}),
                 arrayFilter(ep -> ep.4 >= ep.1, episodes)),
        arrayMap(r -> (r.2, 'resolution', r.1, {_secs("created_at", "r.1")}, {bh_res}, {none}),
                 resolves),
        {resolved.format(kind="resolved")},
        if(length(ratings) > 0, {resolved.format(kind="rated_resolved")},
           CAST([] AS Array({_ITEM_TYPE}))),
        arrayMap(r -> (r.3, 'rating', r.1, toFloat64(r.2 >= 4), -1., {none}), ratings),
        arrayMap(x -> ('', 'reply', x.1, {_secs("x.1", "x.2")}, {bh_reply}, {none}), replies)
    ) AS items
    FROM conversation_summary FINAL
    WHERE tenant_id = {{tenant:String}} AND {in_summary}
)
ARRAY JOIN items AS it
WHERE {in_items}"""
    return sql, parameters


Stamp = tuple[dt.date, int, int]
"""(day, dirtied_at, computed_at) of a pre-aggregated day (``report_days``)."""


@dataclass(frozen=True, slots=True)
class DayPlan:
    """Which parts of a range a report reads pre-aggregated, and the rest it computes live."""

    clean: tuple[Stamp, ...]
    """The whole UTC days read from ``report_daily``."""
    live: tuple[Window, ...]
    """The rest of the range, computed from ``conversation_summary``."""
    hours: tuple[tuple[Stamp, int, int], ...] = ()
    """Days read per hour from ``report_hourly``: hours ``[first, last)`` of their computation."""
    partial: tuple[tuple[Stamp, int, Window], ...] = ()
    """Partial hours at the range's ends: (day, hour, the window of it inside the range), read
    from the items of ``report_hourly`` whose instant is in the window."""
    fresh: tuple[Stamp, ...] = ()
    """Days changed since their last computation whose hours that did not change since
    (``report_hours``) are read from it (in ``hours`` / ``partial``)."""
    changes: tuple[tuple[str, int], ...] = ()
    """(inbox, when its business hours last changed) of every inbox of the tenant whose hours
    ever changed (``report_hours_changes``)."""

    def changed_inboxes(self, inbox_id: str = "") -> tuple[tuple[str, int], ...]:
        """The ``changes`` that postdate a computation the plan reads (of ``inbox_id`` if set).

        The rows of such an inbox computed at or before its change hold business
        seconds under its old hours; every other value of them is still right.
        """
        used = [s[2] for s in (*self.clean, *(s for s, _, _ in self.hours))]
        used.extend(s[2] for s, _, _ in self.partial)
        oldest = min(used, default=None)
        return tuple(
            (inbox, at)
            for inbox, at in self.changes
            if oldest is not None and oldest <= at and inbox_id in ("", inbox)
        )

    def stamps(self) -> list[Stamp]:
        """Every clean pre-aggregated day the plan reads, in order."""
        used = {
            *self.clean,
            *(stamp for stamp, _, _ in self.hours),
            *(s for s, _, _ in self.partial),
        }
        return sorted(used - set(self.fresh))

    def fresh_hours(self) -> list[tuple[dt.date, int, int]]:
        """(day, hour, computed_at) of every hour the plan reads from a changed day."""
        fresh = set(self.fresh)
        used = {(s[0], h, s[2]) for s, a, b in self.hours if s in fresh for h in range(a, b)}
        used.update((s[0], h, s[2]) for s, h, _ in self.partial if s in fresh)
        return sorted(used)


_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000


async def day_plan(store: Store, flt: ReportFilter) -> DayPlan:
    """Split the range: clean whole UTC days, clean UTC hours (whole or not), live windows.

    A day changed since its last computation (in a live system: today, most
    of the time) still has that computation's rows for the hours that did
    not change since (``report_hours``): those are read too.
    """
    start, end = _ms(flt.start), _ms(flt.end)
    if start >= end:
        return _plan(flt, ())
    stamps, changes = await _stamps(
        store,
        flt.tenant_id,
        "day >= {d0:Date} AND day <= {d1:Date}",
        {"d0": _date(start // _DAY_MS), "d1": _date((end - 1) // _DAY_MS)},
    )
    clean = [s for s in stamps if s[2] > s[1]]
    dirty = [s for s in stamps if s[2] <= s[1]]
    fresh: list[tuple[Stamp, frozenset[int]]] = []
    if dirty:
        marks = await _hour_marks(store, flt.tenant_id, [s[0] for s in dirty])
        for stamp in dirty:
            usable = frozenset(h for h in range(24) if marks.get((stamp[0], h), 0) < stamp[2])
            if usable:
                fresh.append((stamp, usable))
    return dataclasses.replace(_plan(flt, clean, hourly=True, fresh=fresh), changes=changes)


async def _stamps(
    store: Store, tenant_id: str, days: str, parameters: dict[str, Any]
) -> tuple[list[Stamp], tuple[tuple[str, int], ...]]:
    """The computed ``days`` (SQL condition) and :func:`hours_changes`, in one query."""
    rows = await store.query(
        f"""
SELECT day, max(dirtied_at) AS d, max(computed_at) AS c, '' FROM report_days
WHERE tenant_id = {{tenant:String}} AND {days}
GROUP BY day HAVING c > 0
UNION ALL
SELECT toDate(0), max(changed_at), toUInt64(0), inbox_id FROM report_hours_changes
WHERE tenant_id = {{tenant:String}} GROUP BY inbox_id""",
        {**parameters, "tenant": tenant_id},
    )
    stamps = sorted((day, int(d), int(c)) for day, d, c, inbox in rows if not inbox)
    changes = tuple(sorted((str(inbox), int(d)) for _, d, _, inbox in rows if inbox))
    return stamps, changes


async def fixed(store: Store, tenant_id: str, version: int) -> dict[tuple[dt.date, int], int]:
    """Per computation whose changed business seconds were written for ``version``: the
    write to read (the first recorded, should two replicas have written it)."""
    rows = await store.query(
        """
SELECT c, min(writer) FROM report_hours_fixed ARRAY JOIN covered AS c
WHERE tenant_id = {tenant:String} AND version = {version:UInt64} GROUP BY c""",
        {"tenant": tenant_id, "version": version},
    )
    return {(c[0], int(c[1])): int(w) for c, w in rows}


async def hours_changes(store: Store, tenant_id: str) -> tuple[tuple[str, int], ...]:
    """(inbox, when its business hours last changed) of the tenant's inboxes, in order."""
    rows = await store.query(
        """
SELECT inbox_id, max(changed_at) FROM report_hours_changes
WHERE tenant_id = {tenant:String} GROUP BY inbox_id ORDER BY inbox_id""",
        {"tenant": tenant_id},
    )
    return tuple((str(inbox), int(at)) for inbox, at in rows)


async def _hour_marks(
    store: Store, tenant_id: str, days: Sequence[dt.date]
) -> dict[tuple[dt.date, int], int]:
    """When each hour of ``days`` last changed (hours never marked: absent)."""
    rows = await store.query(
        """
SELECT day, hour, max(dirtied_at) FROM report_hours
WHERE tenant_id = {tenant:String} AND day IN {days:Array(Date)}
GROUP BY day, hour""",
        {"tenant": tenant_id, "days": list(days)},
    )
    return {(day, int(hour)): int(d) for day, hour, d in rows}


def _plan(
    flt: ReportFilter,
    clean: Sequence[Stamp],
    hourly: bool = False,
    fresh: Sequence[tuple[Stamp, frozenset[int]]] = (),
) -> DayPlan:
    """The plan reading ``clean`` days pre-aggregated and the rest of the range live.

    Days of ``clean`` wholly inside the range are read per day; with
    ``hourly``, the others (the range's first and last days) and the hours
    of ``fresh`` (changed days: the hours that did not change since their
    computation) are read per hour: whole hours inside the range from the
    hours' aggregates, partial hours at the range's ends from the hours' items.
    """
    start, end = _ms(flt.start), _ms(flt.end)
    whole: list[Stamp] = []
    hours: list[tuple[Stamp, int, int]] = []
    partial: list[tuple[Stamp, int, Window]] = []
    parts: list[Window] = []  # pre-aggregated, in order
    days: list[tuple[Stamp, frozenset[int] | None]] = [(s, None) for s in clean]
    days.extend(fresh if hourly else ())
    for stamp, usable in sorted(days, key=lambda d: d[0]):
        day_start = _day_ms(stamp[0])
        lo, hi = max(start, day_start), min(end, day_start + _DAY_MS)
        if usable is None and (lo, hi) == (day_start, day_start + _DAY_MS):
            whole.append(stamp)
            parts.append((lo, hi))
        elif hourly and lo < hi:
            first = -(-(lo - day_start) // _HOUR_MS)
            last = (hi - day_start) // _HOUR_MS
            # [lo, hi) cut at the hour boundaries: partial pieces and whole hours, in order.
            cuts = sorted({lo, hi, *(day_start + h * _HOUR_MS for h in range(first, last + 1))})
            for a, b in itertools.pairwise(cuts):
                hour = (a - day_start) // _HOUR_MS
                if usable is not None and hour not in usable:
                    continue
                if b - a < _HOUR_MS:
                    partial.append((stamp, hour, (a, b)))
                elif hours and hours[-1][0] == stamp and hours[-1][2] == hour:
                    hours[-1] = (stamp, hours[-1][1], hour + 1)  # the same run of hours
                    parts[-1] = (parts[-1][0], b)
                    continue
                else:
                    hours.append((stamp, hour, hour + 1))
                parts.append((a, b))
    live: list[Window] = []
    cursor = start
    for lo, hi in parts:
        if cursor < lo:
            live.append((cursor, lo))
        cursor = hi
    if cursor < end:
        live.append((cursor, end))
    used = {s for s, _, _ in hours} | {s for s, _, _ in partial}
    return DayPlan(
        tuple(whole),
        tuple(live),
        tuple(hours),
        tuple(partial),
        tuple(s for s, _ in fresh if s in used),
    )


def _day_ms(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * _DAY_MS


async def _plan_still_holds(store: Store, flt: ReportFilter, plan: DayPlan) -> bool:
    """True when nothing the plan reads pre-aggregated changed since it was made.

    Days only ever get dirtier or newly computed (both stamps grow), so
    unchanged stamps now mean they held for the whole report query too:
    its pre-aggregates and its live part saw the same summaries. Hours read
    from a changed day must still be unchanged since its computation, and no
    inbox's business hours may have changed meanwhile.
    """
    stamps = plan.stamps()
    if stamps or plan.fresh or plan.changes:
        now, changes = await _stamps(
            store,
            flt.tenant_id,
            "day IN {days:Array(Date)}",
            {"days": [d for d, _, _ in stamps]},
        )
        if now != stamps or changes != plan.changes:
            return False
    used = plan.fresh_hours()
    if used:
        marks = await _hour_marks(store, flt.tenant_id, sorted({d for d, _, _ in used}))
        return all(marks.get((day, hour), 0) < computed for day, hour, computed in used)
    return True


def _date(days: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=days)


_LINKS_OUT = (
    f"sumIf(arrayCount(l -> l >= {_F}, links), kind = 'handled')"
    f" + sumIf(arrayCount(l -> l < {_T}, links), kind IN ('resolved', 'rated_resolved'))"
)

# {key} is replaced by the grouping column.
_DAILY = (
    """
    SELECT {key} AS key, kind, n, total, vals, {bh}, links
    FROM report_daily
    WHERE tenant_id = {tenant:String} AND day >= {d0:Date} AND day <= {d1:Date}
      AND (day, computed_at) IN (SELECT arrayJoin({gens:Array(Tuple(Date, UInt64))}))
      AND kind IN {kinds:Array(String)}"""
    + _CONV_FILTER
)

# The whole hours of a plan's partial days.
_HOURLY = (
    """
    SELECT {key} AS key, kind, n, total, vals, {bh}, links
    FROM report_hourly
    WHERE tenant_id = {tenant:String} AND day >= {hd0:Date} AND day <= {hd1:Date}
      AND (day, computed_at, hour) IN (SELECT arrayJoin({hgens:Array(Tuple(Date, UInt64, UInt8))}))
      AND kind IN {kinds:Array(String)}"""
    + _CONV_FILTER
)

# The partial hours of a plan's first and last days: the hours' items inside the
# range, aggregated as daily._WRITE_HOURS aggregates all of them ({in_range}: on it.1).
_PARTIAL_ROWS = (
    """
    FROM report_hourly ARRAY JOIN items AS it
    WHERE tenant_id = {tenant:String} AND day >= {pd0:Date} AND day <= {pd1:Date}
      AND (day, computed_at, hour) IN (SELECT arrayJoin({pgens:Array(Tuple(Date, UInt64, UInt8))}))
      AND kind IN {kinds:Array(String)}"""
    + _CONV_FILTER
    + """
      AND {in_range}"""
)

_PARTIAL = (
    """
    SELECT {key} AS key, kind, count() AS n, sum(it.2) AS total,
           groupArrayIf(it.2, kind IN {durations:Array(String)}) AS vals,
           countIf(it.3 >= 0) AS bh_n, sumIf(it.3, it.3 >= 0) AS bh_total,
           groupArrayIf(it.3, it.3 >= 0) AS bh_vals,
           groupArrayIf(it.4, it.4 != toDateTime64(0, 3, 'UTC')) AS links"""
    + _PARTIAL_ROWS
    + """
    GROUP BY key, kind"""
)

_NO_VALUES = "CAST([] AS Array(Float64))"

_BH = "bh_n, bh_total, bh_vals"

# Both ends of a duration item ``it``: see _item_business_seconds.
_ITEM_ENDS = """
    fromUnixTimestamp64Milli(toUnixTimestamp64Milli(it.1)
        - if(kind = 'resolution', toInt64(round(it.2 * 1000)), 0), 'UTC') AS s,
    fromUnixTimestamp64Milli(toUnixTimestamp64Milli(it.1)
        + if(kind = 'resolution', 0, toInt64(round(it.2 * 1000))), 'UTC') AS e"""

# _PARTIAL where some items' business seconds are derived again: {bh_item} for them.
_PARTIAL_CHANGED = (
    """
    SELECT key, kind, count() AS n, sum(it.2) AS total,
           groupArrayIf(it.2, kind IN {durations:Array(String)}) AS vals,
           countIf(b >= 0) AS bh_n, sumIf(b, b >= 0) AS bh_total,
           groupArrayIf(b, b >= 0) AS bh_vals,
           groupArrayIf(it.4, it.4 != toDateTime64(0, 3, 'UTC')) AS links
    FROM (
        SELECT key, kind, it, {bh_item} AS b
        FROM (
            SELECT {key} AS key, kind, inbox_id, computed_at, it, """
    + _ITEM_ENDS
    + _PARTIAL_ROWS
    + """
        )
    )
    GROUP BY key, kind"""
)

_REDERIVED_ROWS = """
    SELECT tenant_id, day, computed_at, hour, kind, inbox_id, team_id, agents, agent,
           {bh_array} AS ball, arrayFilter(x -> x >= 0, ball) AS bv,
           arrayFilter(x -> x.2 >= 0, if(empty(ball),
               CAST([] AS Array(Tuple(DateTime64(3, 'UTC'), Float64))),
               arrayZip(ats, ball))) AS bitems
    FROM (
        SELECT tenant_id, day, computed_at, hour, kind, inbox_id, team_id, agents, agent,
               items.at AS ats,
               arrayMap((a, v) -> fromUnixTimestamp64Milli(toUnixTimestamp64Milli(a)
                   - if(kind = 'resolution', toInt64(round(v * 1000)), 0), 'UTC'),
                   items.at, items.v) AS ss,
               arrayMap((a, v) -> fromUnixTimestamp64Milli(toUnixTimestamp64Milli(a)
                   + if(kind = 'resolution', 0, toInt64(round(v * 1000))), 'UTC'),
                   items.at, items.v) AS es
        FROM report_hourly
        WHERE tenant_id = {tenant:String} AND {where}
    )"""
"""Per ``report_hourly`` row matching ``{where}``: its duration items' business seconds
under the current hours (``bv``; see :func:`_item_business_seconds`), arrays per row,
and with their instants (``bitems``)."""

_ROWS_OF_RANGE = (
    """day >= {rd0:Date} AND day <= {rd1:Date} AND ({computations})
          AND kind IN {rkinds:Array(String)} AND {stale}"""
    + _CONV_FILTER
)

# The business seconds of the rows of inboxes whose hours changed after the rows were
# computed ({stale}), from their items under the current hours; every other value of
# those rows is read from them as usual (their bh_* left out there).
_REDERIVED = (
    """
    SELECT {key} AS key, kind, toUInt64(0) AS n, 0. AS total, """
    + _NO_VALUES
    + """ AS vals,
           toUInt64(length(bv)) AS bh_n, arraySum(bv) AS bh_total, bv AS bh_vals,
           CAST([] AS Array(DateTime64(3, 'UTC'))) AS links
    FROM ("""
    + _REDERIVED_ROWS.replace("{where}", _ROWS_OF_RANGE)
    + """)"""
)

# The items of the partial hours, from report_hours_fix ({in_range}: on it.1).
_FIXED_PARTIAL = (
    """
    SELECT {key} AS key, kind, toUInt64(0) AS n, 0. AS total, """
    + _NO_VALUES
    + """ AS vals, count() AS bh_n, sum(it.2) AS bh_total, groupArray(it.2) AS bh_vals,
           CAST([] AS Array(DateTime64(3, 'UTC'))) AS links
    FROM report_hours_fix ARRAY JOIN items AS it
    WHERE tenant_id = {tenant:String} AND version = {fversion:UInt64}
      AND (day, computed_at, writer) IN
          (SELECT arrayJoin({fwrites:Array(Tuple(Date, UInt64, UInt64))}))
      AND day >= {pd0:Date} AND day <= {pd1:Date}
      AND (day, computed_at, hour) IN (SELECT arrayJoin({pgens:Array(Tuple(Date, UInt64, UInt8))}))
      AND kind IN {rkinds:Array(String)} AND {stale}"""
    + _CONV_FILTER
    + """
      AND {in_range}
    GROUP BY key, kind"""
)

# The same, written once after the change (daily.write_hours_fix).
_FIXED = (
    """
    SELECT {key} AS key, kind, toUInt64(0) AS n, 0. AS total, """
    + _NO_VALUES
    + """ AS vals, bh_n, bh_total, bh_vals,
           CAST([] AS Array(DateTime64(3, 'UTC'))) AS links
    FROM report_hours_fix
    WHERE tenant_id = {tenant:String} AND version = {fversion:UInt64}
      AND (day, computed_at, writer) IN
          (SELECT arrayJoin({fwrites:Array(Tuple(Date, UInt64, UInt64))}))
      AND """
    + _ROWS_OF_RANGE
)


def hours_fix_sql(
    hours: Sequence[BusinessHours], changed: Sequence[tuple[str, int]]
) -> tuple[str, dict[str, Any]]:
    """SQL: per ``report_hourly`` row of the computations ``{covered}`` (``(day, computed_at)``)
    of an inbox of ``changed`` computed at or before its change, its duration kind and
    its business seconds under ``hours`` (``bv``), for ``report_hours_fix``."""
    stale, parameters = _stale_sql(changed)
    bh_array, p = _items_business_seconds(hours)
    parameters.update(p)
    where = (
        "(day, computed_at) IN (SELECT arrayJoin({covered:Array(Tuple(Date, UInt64))}))"
        f" AND kind IN {{durations:Array(String)}} AND {stale}"
    )
    sql = _REDERIVED_ROWS.replace("{where}", where).replace("{bh_array}", bh_array)
    return sql, {**parameters, "durations": list(DURATION_KINDS)}


def _stale_sql(changed: Sequence[tuple[str, int]]) -> tuple[str, dict[str, Any]]:
    """SQL true for the rows of ``changed`` inboxes computed at or before their change."""
    parameters: dict[str, Any] = {}
    terms = []
    for i, (inbox, at) in enumerate(changed):
        parameters[f"si{i}"], parameters[f"sa{i}"] = inbox, at
        terms.append(f"(inbox_id = {{si{i}:String}} AND computed_at <= {{sa{i}:UInt64}})")
    return "(" + " OR ".join(terms or ["0"]) + ")", parameters


def _item_business_seconds(hours: Sequence[BusinessHours]) -> tuple[str, dict[str, Any]]:
    """SQL: the business seconds of a duration item ``it`` under ``hours`` (-1 without hours).

    An item keeps one end of its duration as its instant (``it.1``: the end of a
    resolution, the start of the others) and its length in seconds (``it.2``, whole
    milliseconds / 1000, so ``round(it.2 * 1000)`` is exact): both ends are the
    instants :func:`items_sql` and :func:`_live_sql` computed them from, and the
    same calendar expression gives the same value.
    """
    return _by_zone(
        hours,
        lambda z, tz: (
            f"toFloat64({_business_calendar(z, tz, 'e')} - {_business_calendar(z, tz, 's')})"
        ),
        "-1.",
    )


def _items_business_seconds(hours: Sequence[BusinessHours]) -> tuple[str, dict[str, Any]]:
    """:func:`_item_business_seconds` of a row's items at once (their ends ``ss``, ``es``).

    Arrays per row: no row per item to aggregate again (≈ 1.6M items for two
    inboxes over a month in the benchmark).
    """
    return _by_zone(
        hours,
        lambda z, tz: (
            f"arrayMap((s, e) -> toFloat64("
            f"{_business_calendar(z, tz, 'e')} - {_business_calendar(z, tz, 's')}), ss, es)"
        ),
        _NO_VALUES,
    )


def _live_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """``settings`` for a query reading ``conversation_summary FINAL`` by its time span.

    FINAL normally widens the granules the first_at / last_at indexes select
    to every granule sharing their sorting-key range, in case an older
    version of a row matches where the newest does not. Here that cannot
    happen: a summary's span only grows with each new version, so if an older
    version overlaps a window the newest does too (and is read). Skipping the
    widening reads ~2.5x fewer granules for a day's window.
    """
    return {**(settings or {}), "use_skip_indexes_if_final_exact_mode": 0}


def _live_sql(
    key: str, kinds: Sequence[str], hours: Sequence[BusinessHours], windows: Sequence[Window]
) -> tuple[str, dict[str, Any]]:
    """The live part of a report: the rows ``report_daily`` would hold, for ``windows``.

    The same values as grouping :func:`items_sql`, but each conversation's
    values stay arrays aggregated with ``-Array`` combinators (no row per
    item: several times cheaper), and the counts across days are decided
    here, where the range is known: a conversation counts as resolved where
    its last resolve in the range falls in ``windows``, as handled by an
    agent where its first assignment to that agent in the range does. For
    the agents table (``key`` ``agent``) each conversation is taken once per
    agent its values are attributed to, each time with that agent's values.
    """
    by_agent = key == "agent"

    def inside(at: str) -> str:
        return _window_sql(windows, at, at)[0]

    def of(agent: str) -> str:
        return f" AND {agent} = agent" if by_agent else ""

    parameters = _window_sql(windows, "", "")[1]
    bh = {}
    for name, var, array, a, b in (
        ("wait", "ep", "ep_w", "ep.1", "ep.2"),
        ("first_response", "ep", "ep_f", "ep.1", "ep.4"),
        ("resolution", "r", "res_in", "created_at", "r.1"),
        ("reply", "x", "rep_in", "x.1", "x.2"),
    ):
        bh[name], p = _business_array(hours, var, array, a, b)
        parameters.update(p)
    zero = f"toUInt64(0), 0., {_NO_VALUES}"
    cells = {
        "created": f"('created', countIf({inside('created_at')}), 0., {_NO_VALUES}, {zero})",
        "episode": f"('episode', sum(length(ep_in)), 0., {_NO_VALUES}, {zero})",
        "handled": f"('handled', sum(handled), 0., {_NO_VALUES}, {zero})",
        "resolved": f"('resolved', sum(res_last), 0., {_NO_VALUES}, {zero})",
        "rated_resolved": (
            f"('rated_resolved', sumIf(res_last, length(ratings) > 0), 0., {_NO_VALUES}, {zero})"
        ),
        "rating": (
            "('rating', sum(length(rate_in)), toFloat64(sum(arrayCount(x -> x.2 >= 4, rate_in))),"
            f" {_NO_VALUES}, {zero})"
        ),
    }
    for name in DURATION_KINDS:
        cells[name] = (
            f"('{name}', sum(length(v_{name})), sum(arraySum(v_{name})), groupArrayArray(v_{name}),"
            f" sum(length(bh_{name})), sum(arraySum(bh_{name})), groupArrayArray(bh_{name}))"
        )
    # Values with no agent (created, episode, reply) never reach an agent's row.
    skipped = ("created", "episode", "reply") if by_agent else ()
    wanted_kinds = [k for k in kinds if k not in skipped]
    wanted = [cells[k] for k in wanted_kinds]
    in_summary, _ = _window_sql(windows, "first_at", "last_at")
    agents = (
        """
            ARRAY JOIN arrayFilter(a -> a != '', arrayDistinct(arrayConcat(
                arrayMap(x -> x.2, assigns), arrayMap(ep -> ep.3, episodes),
                arrayMap(ep -> ep.5, episodes), arrayMap(r -> r.2, resolves),
                arrayMap(r -> r.3, ratings)))) AS agent"""
        if by_agent
        else ""
    )
    # Agents whose first assignment at or after the range's start is in windows.
    if by_agent:
        handled = f"toUInt64({inside(f'arrayFirst(x -> x.1 >= {_F} AND x.2 = agent, assigns).1')})"
    else:
        handled = f"""toUInt64(arrayCount(i -> assigns[i].2 != '' AND {inside("assigns[i].1")}
            AND arrayCount(j -> j < i AND assigns[j].2 = assigns[i].2 AND assigns[j].1 >= {_F},
                           arrayEnumerate(assigns)) = 0,
            arrayEnumerate(assigns)))"""
    columns = {
        "ep_in": f"arrayFilter(ep -> {inside('ep.1')}, episodes)",
        "ep_w": f"arrayFilter(ep -> ep.2 >= ep.1{of('ep.3')}, ep_in)",
        "ep_f": f"arrayFilter(ep -> ep.4 >= ep.1{of('ep.5')}, ep_in)",
        "res_in": f"arrayFilter(r -> {inside('r.1')}{of('r.2')}, resolves)",
        "rate_in": f"arrayFilter(x -> {inside('x.1')}{of('x.3')}, ratings)",
        "rep_in": f"arrayFilter(x -> {inside('x.1')}, replies)",
        "res_last": f"""arrayCount(i -> {inside("resolves[i].1")}{of("resolves[i].2")}
                                AND (i = length(resolves) OR resolves[i + 1].1 >= {_T}),
                           arrayEnumerate(resolves))""",
        "handled": handled,
        "v_wait": f"arrayMap(ep -> {_secs('ep.1', 'ep.2')}, ep_w)",
        "v_first_response": f"arrayMap(ep -> {_secs('ep.1', 'ep.4')}, ep_f)",
        "v_resolution": f"arrayMap(r -> {_secs('created_at', 'r.1')}, res_in)",
        "v_reply": f"arrayMap(x -> {_secs('x.1', 'x.2')}, rep_in)",
        **{f"bh_{name}": sql for name, sql in bh.items()},
    }
    # Only the columns of the kinds asked for: the query analysis of each lambda is
    # most of a live part's fixed cost (≈ 5 ms less for the overview, without handled).
    needs = {
        "episode": ("ep_in",),
        "handled": ("handled",),
        "resolved": ("res_last",),
        "rated_resolved": ("res_last",),
        "rating": ("rate_in",),
        "wait": ("ep_in", "ep_w", "v_wait", "bh_wait"),
        "first_response": ("ep_in", "ep_f", "v_first_response", "bh_first_response"),
        "resolution": ("res_in", "v_resolution", "bh_resolution"),
        "reply": ("rep_in", "v_reply", "bh_reply"),
    }
    needed = {column for k in wanted_kinds for column in needs.get(k, ())}
    selected = "".join(
        f",\n                {sql} AS {alias}" for alias, sql in columns.items() if alias in needed
    )
    sql = f"""
    SELECT key, kv.1 AS kind, kv.2 AS n, kv.3 AS total, kv.4 AS vals, kv.5 AS bh_n,
           kv.6 AS bh_total, kv.7 AS bh_vals, CAST([] AS Array(DateTime64(3, 'UTC'))) AS links
    FROM (
        SELECT key, [{", ".join(wanted)}] AS kvs
        FROM (
            SELECT
                {key} AS key, created_at, ratings{selected}
            FROM conversation_summary FINAL {agents}
            WHERE tenant_id = {{tenant:String}} AND {in_summary} {_CONV_FILTER}
        )
        GROUP BY key
    )
    ARRAY JOIN kvs AS kv
    -- A key is listed when it has anything counted in the range, as from report_daily.
    WHERE kv.2 > 0"""
    return sql, parameters


Cells = dict[str, tuple[int, float, Any, int, float, Any]]
"""Per kind: count, sum, [p50, p90], and the same in business hours."""


async def _planned(
    store: Store, flt: ReportFilter, compute: Callable[[DayPlan], Awaitable[T]]
) -> T:
    """``compute(plan)`` for the range's current day plan.

    If a clean day of the plan changes meanwhile (the rare race with a
    refresh, an erasure or a batch), it runs again on a new plan; after
    three such races, on a fully live one.
    """
    for _ in range(3):
        plan = await day_plan(store, flt)
        result = await compute(plan)
        if await _plan_still_holds(store, flt, plan):
            return result
        REPORT_REPLANS.inc()
    return await compute(_plan(flt, ()))


async def _aggregate(
    store: Store,
    flt: ReportFilter,
    key: str,
    kinds: Sequence[str],
    settings: Mapping[str, Any] | None,
) -> dict[str, Cells]:
    """Per value of ``key`` (a column of the items, or ``''``): the cells of every kind.

    Clean whole days come from ``report_daily``, the rest of the range is
    computed live from the summaries, in one query.
    """
    return await _planned(
        store, flt, lambda plan: _aggregate_plan(store, flt, key, kinds, plan, settings)
    )


async def _aggregate_plan(
    store: Store,
    flt: ReportFilter,
    key: str,
    kinds: Sequence[str],
    plan: DayPlan,
    settings: Mapping[str, Any] | None,
) -> dict[str, Cells]:
    parameters: dict[str, Any] = {
        **flt.parameters(),
        "kinds": list(kinds),
        "durations": list(DURATION_KINDS),
    }
    parts: list[str] = []
    changed = plan.changed_inboxes(flt.inbox_id)
    bh, bh_item = _BH, "it.3"
    if changed:
        bh, bh_item = await _changed_business_seconds(
            store, flt, key, kinds, plan, changed, parameters, parts
        )
    if plan.clean:
        parts.append(_DAILY.replace("{key}", key).replace("{bh}", bh))
        parameters["gens"] = [(day, computed) for day, _, computed in plan.clean]
        parameters["d0"], parameters["d1"] = plan.clean[0][0], plan.clean[-1][0]
    if plan.hours:
        parts.append(_HOURLY.replace("{key}", key).replace("{bh}", bh))
        parameters["hgens"] = [
            (day, computed, hour)
            for (day, _, computed), first, last in plan.hours
            for hour in range(first, last)
        ]
        parameters["hd0"], parameters["hd1"] = plan.hours[0][0][0], plan.hours[-1][0][0]
    if plan.partial:
        in_range, p = _window_sql([w for _, _, w in plan.partial], "it.1", "it.1", "pw")
        partial = _PARTIAL_CHANGED if changed else _PARTIAL
        parts.append(
            partial.replace("{key}", key)
            .replace("{in_range}", in_range)
            .replace("{bh_item}", bh_item)
        )
        parameters.update(p)
        parameters["pgens"] = [
            (day, computed, hour) for (day, _, computed), hour, _ in plan.partial
        ]
        parameters["pd0"], parameters["pd1"] = plan.partial[0][0][0], plan.partial[-1][0][0]
    if plan.live:
        live, p = _live_sql(key, kinds, await business_hours(store, flt.tenant_id), plan.live)
        parts.append(live)
        parameters.update(p)
    sql = f"""
SELECT key, kind, sum(n) - ({_LINKS_OUT}), sum(total),
       quantilesExactInclusiveArray(0.5, 0.9)(vals),
       sum(bh_n), sum(bh_total), quantilesExactInclusiveArray(0.5, 0.9)(bh_vals)
FROM ({" UNION ALL ".join(parts)})
GROUP BY key, kind"""
    rows = await store.query(sql, parameters, _live_settings(settings) if plan.live else settings)
    result: dict[str, Cells] = {}
    for k, kind, n, total, q, bh_n, bh_total, bh_q in rows:
        result.setdefault(str(k), {})[str(kind)] = (
            int(n),
            float(total),
            q,
            int(bh_n),
            float(bh_total),
            bh_q,
        )
    return result


async def _changed_business_seconds(
    store: Store,
    flt: ReportFilter,
    key: str,
    kinds: Sequence[str],
    plan: DayPlan,
    changed: Sequence[tuple[str, int]],
    parameters: dict[str, Any],
    parts: list[str],
) -> tuple[str, str]:
    """For inboxes whose business hours ``changed`` since rows the plan reads were computed.

    Adds the parts giving those rows' business seconds under ``hours`` to ``parts``
    (and their ``parameters``): from ``report_hours_fix`` if it was written for the
    tenant's latest change and covers every computation read that predates it, else
    derived from the items here under the current hours. Returns the bh columns of
    ``_DAILY`` / ``_HOURLY`` without them, and the ``_PARTIAL_CHANGED`` expression of
    an item's business seconds.
    """
    stale, p = _stale_sql(changed)
    parameters.update(p)
    rkinds = [k for k in kinds if k in DURATION_KINDS]
    parameters["rkinds"] = rkinds
    version = max(at for _, at in plan.changes)
    used = {(s[0], s[2]) for s in (*plan.clean, *(s for s, _, _ in plan.hours))}
    used.update((s[0], s[2]) for s, _, _ in plan.partial)
    covered = await fixed(store, flt.tenant_id, version)
    use_fix = all(c in covered for c in used if c[1] <= version)
    hours = [] if use_fix else await business_hours(store, flt.tenant_id)
    parameters["fversion"] = version
    parameters["fwrites"] = [(d, c, w) for (d, c), w in covered.items() if (d, c) in used]
    bh = (
        f"if({stale}, 0, bh_n) AS bh_n, if({stale}, 0., bh_total) AS bh_total,"
        f" if({stale}, {_NO_VALUES}, bh_vals) AS bh_vals"
    )
    if use_fix:
        bh_item = f"if({stale}, -1., it.3)"
    else:
        item, p = _item_business_seconds(hours)
        parameters.update(p)
        bh_item = f"if({stale} AND kind IN {{durations:Array(String)}}, {item}, it.3)"
    if not rkinds:
        return bh, bh_item
    if use_fix and plan.partial:
        in_range, _ = _window_sql([w for _, _, w in plan.partial], "it.1", "it.1", "pw")
        parts.append(
            _FIXED_PARTIAL.replace("{key}", key)
            .replace("{stale}", stale)
            .replace("{in_range}", in_range)
        )
    computations = []
    if plan.clean:
        whole = "(day, computed_at) IN (SELECT arrayJoin({rdays:Array(Tuple(Date, UInt64))}))"
        # report_hours_fix also has each whole day's rows, as hour 24.
        computations.append(f"({whole} AND hour = 24)" if use_fix else whole)
        parameters["rdays"] = [(day, computed) for day, _, computed in plan.clean]
    if plan.hours:
        computations.append(
            "(day, computed_at, hour) IN"
            " (SELECT arrayJoin({rhours:Array(Tuple(Date, UInt64, UInt8))}))"
        )
        parameters["rhours"] = [
            (day, computed, hour)
            for (day, _, computed), first, last in plan.hours
            for hour in range(first, last)
        ]
    if computations:
        days = [s[0] for s in plan.clean] + [s[0] for s, _, _ in plan.hours]
        parameters["rd0"], parameters["rd1"] = min(days), max(days)
        if use_fix:
            template = _FIXED
        else:
            bh_array, p = _items_business_seconds(hours)
            parameters.update(p)
            template = _REDERIVED.replace("{bh_array}", bh_array)
        parts.append(
            template.replace("{key}", key)
            .replace("{computations}", " OR ".join(computations))
            .replace("{stale}", stale)
        )
    return bh, bh_item


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


def _duration(cells: Cells, kind: str) -> dict[str, Any]:
    n, total, q, bh_n, bh_total, bh_q = cells.get(kind, (0, 0.0, (math.nan,) * 2, 0, 0.0, ()))
    stats = _stats(n, total / n if n else None, q)
    stats["business_hours"] = _stats(
        bh_n, bh_total / bh_n if bh_n else None, bh_q if bh_n else (math.nan, math.nan)
    )
    return stats


def _metrics(cells: Cells) -> dict[str, Any]:
    def count(kind: str) -> int:
        return cells[kind][0] if kind in cells else 0

    resolved, rated_resolved, ratings = count("resolved"), count("rated_resolved"), count("rating")
    satisfied = round(cells["rating"][1]) if ratings else 0
    result: dict[str, Any] = {
        "conversations_created": count("created"),
        "conversations_resolved": resolved,
        "conversations_handled": count("handled"),
    }
    for kind in DURATIONS:
        result[f"{kind}_time"] = _duration(cells, kind)
    result["csat"] = {
        "ratings": ratings,
        "satisfied": satisfied,
        "score": round(satisfied / ratings, 4) if ratings else None,
        "resolved_conversations": resolved,
        "rated_conversations": rated_resolved,
        "response_rate": round(rated_resolved / resolved, 4) if resolved else None,
    }
    return result


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
    kinds = [k for k in ITEM_KINDS if k != "handled"]
    cells = (await _aggregate(store, flt, "''", kinds, settings)).get("", {})
    metrics = _metrics(cells)
    metrics.pop("conversations_handled")
    metrics["reply_time"] = _duration(cells, "reply")
    return metrics


async def breakdown(
    store: Store, flt: ReportFilter, by: GroupBy, settings: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The overview's metrics for each inbox, team or agent (rows without a key left out)."""
    # Every kind but reply: a row for each key with anything counted in the range.
    kinds = [k for k in ITEM_KINDS if k != "reply"]
    grouped = await _aggregate(
        store, flt, "agent" if by == "agent" else f"{by}_id", kinds, settings
    )
    result = []
    for key in sorted(grouped):
        if key == "":
            continue
        metrics = _metrics(grouped[key])
        if by != "agent":
            metrics.pop("conversations_handled")
        result.append({f"{by}_id": key, **metrics})
    return result


_BUCKETS: dict[str, str] = {
    "hour": "toStartOfHour(toTimeZone(t, '{tz}'))",
    "day": "toStartOfDay(toTimeZone(t, '{tz}'))",
    "week": "toDateTime(toMonday(toTimeZone(t, '{tz}')), '{tz}')",
}


_SLOT_MS = 900_000
"""``report_daily.slots``: items per 15-minute slot of the UTC day."""


def _summaries(windows: Sequence[Window]) -> tuple[str, dict[str, Any]]:
    """FROM/WHERE of the filtered summaries with anything counted in ``windows``."""
    in_windows, parameters = _window_sql(windows, "first_at", "last_at")
    sql = f"""
    FROM conversation_summary FINAL
    WHERE tenant_id = {{tenant:String}} AND {in_windows} {_CONV_FILTER}"""
    return sql, parameters


def _aligned(plan: DayPlan, flt: ReportFilter, same: Callable[[int, int], bool]) -> DayPlan:
    """``plan`` without the clean days having a slot ``[s, e]`` (ms) that ``same`` splits."""
    kept = [
        c
        for c in plan.clean
        if all(
            same(s, s + _SLOT_MS - 1)
            for s in range(_day_ms(c[0]), _day_ms(c[0]) + _DAY_MS, _SLOT_MS)
        )
    ]
    return plan if len(kept) == len(plan.clean) else _plan(flt, kept)


async def _slots(
    store: Store, flt: ReportFilter, plan: DayPlan, settings: Mapping[str, Any] | None
) -> list[tuple[int, int, int]]:
    """(slot start ms, created, resolves) of every non-empty slot of the plan's clean days."""
    if not plan.clean:
        return []
    rows = await store.query(
        """
SELECT day, sumForEachIf(slots, kind = 'created'), sumForEachIf(slots, kind = 'resolution')
FROM report_daily
WHERE tenant_id = {tenant:String} AND day >= {d0:Date} AND day <= {d1:Date}
  AND (day, computed_at) IN (SELECT arrayJoin({gens:Array(Tuple(Date, UInt64))}))
  AND kind IN ('created', 'resolution')"""
        + _CONV_FILTER
        + """
GROUP BY day""",
        {
            **flt.parameters(),
            "gens": [(day, computed) for day, _, computed in plan.clean],
            "d0": plan.clean[0][0],
            "d1": plan.clean[-1][0],
        },
        settings,
    )
    result = []
    for day, created, resolved in rows:
        for i in range(96):
            c = int(created[i]) if i < len(created) else 0
            r = int(resolved[i]) if i < len(resolved) else 0
            if c or r:
                result.append((_day_ms(day) + i * _SLOT_MS, c, r))
    return result


async def volume(
    store: Store,
    flt: ReportFilter,
    interval: Interval,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Conversations created and resolved per hour, day or week of the tenant's time zone."""
    tz = await tenant_time_zone(store, flt.tenant_id)
    zone = ZoneInfo(tz)
    starts = _buckets(flt.start, flt.end, interval, zone)
    keys = [int(start.timestamp()) * 1000 for start in starts]

    def same(a: int, b: int) -> bool:
        return bisect.bisect_right(keys, a) == bisect.bisect_right(keys, b)

    async def compute(plan: DayPlan) -> dict[int, list[int]]:
        plan = _aligned(_plan(flt, plan.clean), flt, same)
        counts: dict[int, list[int]] = {}
        for slot, created, resolved in await _slots(store, flt, plan, settings):
            cell = counts.setdefault(keys[bisect.bisect_right(keys, slot) - 1], [0, 0])
            cell[0] += created
            cell[1] += resolved
        if plan.live:
            bucket = _BUCKETS[interval].format(tz=tz)
            in_live, parameters = _window_sql(plan.live, "t", "t")
            summaries, p2 = _summaries(plan.live)
            sql = f"""
SELECT toUnixTimestamp({bucket}) AS b, countIf(kind = 'created'), countIf(kind = 'resolved')
FROM (
    SELECT it.1 AS t, it.2 AS kind
    FROM (
        SELECT arrayConcat([(created_at, 'created')],
                           arrayMap(r -> (r.1, 'resolved'), resolves)) AS its
        {summaries}
    )
    ARRAY JOIN its AS it
)
WHERE {in_live}
GROUP BY b"""
            rows = await store.query(
                sql, {**flt.parameters(), **parameters, **p2}, _live_settings(settings)
            )
            for b, c, r in rows:
                cell = counts.setdefault(int(b) * 1000, [0, 0])
                cell[0] += int(c)
                cell[1] += int(r)
        return counts

    counts = await _planned(store, flt, compute)
    series = []
    for start, key in zip(starts, keys, strict=True):
        created, resolved = counts.pop(key, [0, 0])
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
    zone = ZoneInfo(tz)

    def cell(ms: int) -> tuple[int, int]:
        local = dt.datetime.fromtimestamp(ms / 1000, zone)
        return local.isoweekday(), local.hour

    def offset(ms: int) -> int:
        delta = dt.datetime.fromtimestamp(ms / 1000, zone).utcoffset()
        return int(delta.total_seconds() * 1000) if delta is not None else 0

    def cells_of(day: dt.date) -> list[tuple[int, int]] | None:
        """Each slot's cell, or None if a slot of ``day`` spans two cells."""
        start = _day_ms(day)
        first, last = offset(start), offset(start + _DAY_MS - 1)
        if first == last and first % _SLOT_MS == 0:
            # One whole-quarter-hour offset all day (time zones change at most
            # once a day): every slot lies inside one local hour.
            return [
                (((s + first) // _DAY_MS + 3) % 7 + 1, (s + first) % _DAY_MS // 3_600_000)
                for s in range(start, start + _DAY_MS, _SLOT_MS)
            ]
        slots = range(start, start + _DAY_MS, _SLOT_MS)
        if any(cell(s) != cell(s + _SLOT_MS - 1) for s in slots):
            return None
        return [cell(s) for s in slots]

    async def compute(plan: DayPlan) -> dict[tuple[int, int], int]:
        plan = _plan(flt, plan.clean)  # whole days only: partial ones are live here
        by_day = {day: cells_of(day) for day, _, _ in plan.clean}
        if any(c is None for c in by_day.values()):
            plan = _plan(flt, [c for c in plan.clean if by_day[c[0]] is not None])
        counts: dict[tuple[int, int], int] = {}
        for slot, created, _ in await _slots(store, flt, plan, settings):
            day_cells = by_day[_date(slot // _DAY_MS)]
            assert day_cells is not None
            key = day_cells[slot % _DAY_MS // _SLOT_MS]
            counts[key] = counts.get(key, 0) + created
        if plan.live:
            in_live, parameters = _window_sql(plan.live, "created_at", "created_at")
            summaries, p2 = _summaries(plan.live)
            sql = f"""
SELECT toDayOfWeek(toTimeZone(created_at, '{tz}')) AS d,
       toHour(toTimeZone(created_at, '{tz}')) AS h,
       count()
{summaries} AND {in_live}
GROUP BY d, h"""
            rows = await store.query(
                sql, {**flt.parameters(), **parameters, **p2}, _live_settings(settings)
            )
            for d, h, n in rows:
                counts[int(d), int(h)] = counts.get((int(d), int(h)), 0) + int(n)
        return counts

    counts = await _planned(store, flt, compute)
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
    # Not FINAL over every summary of the tenant: only conversations with a
    # version that waits are read, and their newest version decides.
    sql = """
SELECT count(), max((toUnixTimestamp64Milli(fromUnixTimestamp64Milli({now_ms:Int64}, 'UTC'))
                     - toUnixTimestamp64Milli(since)) / 1000)
FROM (
    SELECT argMax(waiting, version) AS w, argMax(waiting_since, version) AS since,
           argMax(inbox_id, version) AS inbox, argMax(team_id, version) AS team
    FROM conversation_summary
    WHERE tenant_id = {tenant:String} AND (created_at, conversation_id) IN (
        SELECT created_at, conversation_id FROM conversation_summary
        WHERE tenant_id = {tenant:String} AND waiting = 1)
    GROUP BY created_at, conversation_id
)
WHERE w = 1
  AND ({inbox:String} = '' OR inbox = {inbox:String})
  AND ({team:String} = '' OR team = {team:String})"""
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
