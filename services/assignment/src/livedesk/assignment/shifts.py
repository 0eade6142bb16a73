"""Working hours: is an agent inside a shift right now, in its own time zone?

Pure functions, no I/O. A shift is a weekly window ``[start, end)`` in minutes
after local midnight on one weekday; a night shift is written as two shifts,
one per day. A dated exception replaces the weekly shifts on its local date
(a day off, or one shorter window). No shifts at all means always on shift.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Shift", "ShiftException", "on_shift", "validate_schedule", "zone"]


@dataclass(frozen=True, slots=True)
class Shift:
    """One weekly window: ISO weekday (1 = Monday .. 7 = Sunday), minutes [start, end)."""

    weekday: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ShiftException:
    """A dated exception: on local ``date`` either ``day_off`` or only [start, end)."""

    date: dt.date
    day_off: bool
    start: int = 0
    end: int = 0


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` ("" = UTC); ValueError when unknown."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def on_shift(
    now: dt.datetime,
    time_zone: str,
    shifts: Sequence[Shift],
    exceptions: Sequence[ShiftException] = (),
) -> bool:
    """Whether ``now`` (aware) falls inside the agent's working hours."""
    local = now.astimezone(zone(time_zone))
    minute = local.hour * 60 + local.minute
    for exc in exceptions:
        if exc.date == local.date():
            return not exc.day_off and exc.start <= minute < exc.end
    if not shifts:
        return True
    weekday = local.isoweekday()
    return any(s.weekday == weekday and s.start <= minute < s.end for s in shifts)


def validate_schedule(
    time_zone: str, shifts: Sequence[Shift], exceptions: Sequence[ShiftException]
) -> None:
    """ValueError naming the first problem of a schedule."""
    zone(time_zone)
    by_day: dict[int, list[Shift]] = {}
    for s in shifts:
        if not 1 <= s.weekday <= 7:
            raise ValueError("a shift needs a weekday")
        if not (0 <= s.start <= 1439 and 1 <= s.end <= 1440 and s.end > s.start):
            raise ValueError(f"shift {s.start}-{s.end} on day {s.weekday} is out of range")
        by_day.setdefault(s.weekday, []).append(s)
    for day, day_shifts in by_day.items():
        ordered = sorted(day_shifts, key=lambda s: s.start)
        for a, b in itertools.pairwise(ordered):
            if b.start < a.end:
                raise ValueError(f"overlapping shifts on day {day}")
    dates = [e.date for e in exceptions]
    if len(set(dates)) != len(dates):
        raise ValueError("more than one shift exception for a date")
    for e in exceptions:
        if not e.day_off and not (0 <= e.start <= 1439 and 1 <= e.end <= 1440 and e.end > e.start):
            raise ValueError(f"shift exception on {e.date} is out of range")
