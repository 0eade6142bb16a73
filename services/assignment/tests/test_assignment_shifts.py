"""Working hours across time zones, midnight and dated exceptions (pure policy)."""

from __future__ import annotations

import datetime as dt

import pytest

from livedesk.assignment.shifts import Shift, ShiftException, on_shift, validate_schedule

UTC = dt.UTC
MON, TUE = 1, 2


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_no_shifts_means_always_on() -> None:
    assert on_shift(at("2026-03-02T03:00"), "", ())


def test_shift_is_evaluated_in_the_agents_zone() -> None:
    nine_to_five = (Shift(MON, 9 * 60, 17 * 60),)
    # 2026-03-02 is a Monday. 08:30 UTC is 09:30 in Paris (UTC+1), 03:30 in New York.
    assert on_shift(at("2026-03-02T08:30"), "Europe/Paris", nine_to_five)
    assert not on_shift(at("2026-03-02T08:30"), "America/New_York", nine_to_five)
    # 14:30 UTC is 09:30 in New York.
    assert on_shift(at("2026-03-02T14:30"), "America/New_York", nine_to_five)
    # end is exclusive, start inclusive
    assert not on_shift(at("2026-03-02T16:00"), "Europe/Paris", nine_to_five)
    assert on_shift(at("2026-03-02T08:00"), "Europe/Paris", nine_to_five)


def test_night_shift_across_midnight_and_the_date_line() -> None:
    # 22:00-02:00 local, written as two shifts; agent in Tokyo (UTC+9).
    night = (Shift(MON, 22 * 60, 1440), Shift(TUE, 0, 2 * 60))
    assert on_shift(at("2026-03-02T13:30"), "Asia/Tokyo", night)  # Mon 22:30
    assert on_shift(at("2026-03-02T16:30"), "Asia/Tokyo", night)  # Tue 01:30
    assert not on_shift(at("2026-03-02T17:00"), "Asia/Tokyo", night)  # Tue 02:00
    # The same UTC instant is Monday in Los Angeles: not that night's shift there.
    assert not on_shift(at("2026-03-02T16:30"), "America/Los_Angeles", night)


def test_daylight_saving_moves_the_window_in_utc() -> None:
    nine = (Shift(MON, 9 * 60, 10 * 60),)
    # Paris: UTC+1 in winter, UTC+2 from the last Sunday of March.
    assert on_shift(at("2026-03-23T08:30"), "Europe/Paris", nine)
    assert on_shift(at("2026-03-30T07:30"), "Europe/Paris", nine)
    assert not on_shift(at("2026-03-30T08:30"), "Europe/Paris", nine)


def test_exceptions_replace_the_week() -> None:
    week = (Shift(MON, 9 * 60, 17 * 60),)
    holiday = (ShiftException(dt.date(2026, 3, 2), day_off=True),)
    short = (ShiftException(dt.date(2026, 3, 2), day_off=False, start=9 * 60, end=12 * 60),)
    assert not on_shift(at("2026-03-02T10:00"), "", week, holiday)
    assert on_shift(at("2026-03-02T10:00"), "", week, short)
    assert not on_shift(at("2026-03-02T13:00"), "", week, short)
    # The exception's date is local: 2026-03-02 23:30 UTC is already 03-03 in Paris.
    assert on_shift(at("2026-03-02T23:30"), "Europe/Paris", (), holiday)


@pytest.mark.parametrize(
    ("zone", "shifts", "exceptions", "problem"),
    [
        ("Mars/Olympus", (), (), "unknown time zone"),
        ("", (Shift(0, 0, 10),), (), "weekday"),
        ("", (Shift(MON, 10, 10),), (), "out of range"),
        ("", (Shift(MON, 0, 1441),), (), "out of range"),
        ("", (Shift(MON, 0, 100), Shift(MON, 50, 200)), (), "overlapping"),
        (
            "",
            (),
            (
                ShiftException(dt.date(2026, 1, 1), True),
                ShiftException(dt.date(2026, 1, 1), True),
            ),
            "more than one",
        ),
    ],
)
def test_invalid_schedules_are_refused(
    zone: str,
    shifts: tuple[Shift, ...],
    exceptions: tuple[ShiftException, ...],
    problem: str,
) -> None:
    with pytest.raises(ValueError, match=problem):
        validate_schedule(zone, shifts, exceptions)
