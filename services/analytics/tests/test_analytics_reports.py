"""Every metric of docs/metrics.md on a hand-built history with known answers (real chDB).

The history (tests/conftest.py) has a reopened conversation, a transfer, one
conversation still waiting, business hours in another time zone, CSAT, and a
second tenant whose data must never show.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import TYPE_CHECKING, Any

from livedesk.analytics import daily, reports
from livedesk.analytics.reports import ReportFilter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from livedesk.analytics.store import Store
    from livedesk.platform.bus import Envelope

    Ingest = Callable[[Store, list[Envelope]], Awaitable[None]]

TENANT = "tenant-a"
MONDAY = dt.datetime(2024, 5, 6, tzinfo=dt.UTC)
DAY = ReportFilter(TENANT, MONDAY, MONDAY + dt.timedelta(days=1))
# "web": Monday 11:01-12:05 and 12:10-19:00 in Paris = 09:01-10:05 and 10:10-17:00 UTC.
WEB_HOURS = (
    "web",
    "Europe/Paris",
    [11 * 3600 + 60, 12 * 3600 + 600],
    [12 * 3600 + 300, 19 * 3600],
    1,
    1,
)


def stats(count: int, avg: float | None, p50: float | None, p90: float | None) -> dict[str, Any]:
    return {"count": count, "avg": avg, "p50": p50, "p90": p90}


def duration(plain: dict[str, Any], business: dict[str, Any]) -> dict[str, Any]:
    return {**plain, "business_hours": business}


async def _setup(store: Store, ingest: Ingest, events: list[Envelope]) -> None:
    await ingest(store, events)
    await store.insert(
        "inbox_business_hours",
        [(TENANT, *WEB_HOURS)],
        ("tenant_id", "inbox_id", "time_zone", "starts", "ends", "enabled", "version"),
    )
    await store.insert(
        "tenant_settings", [(TENANT, "Europe/Paris", 1)], ("tenant_id", "time_zone", "version")
    )


EXPECTED_OVERVIEW = {
    "conversations_created": 3,
    "conversations_resolved": 2,
    # waits 120 (c1), 600 (c1 reopened), 60 (c2); in business hours 60, 300, 60.
    "wait_time": duration(stats(3, 260.0, 120.0, 504.0), stats(3, 140.0, 60.0, 252.0)),
    # first agent message: 300 (c1), 1200 (c1 reopened, a2), 180 (c2); business 240, 900, 180.
    "first_response_time": duration(stats(3, 560.0, 300.0, 1020.0), stats(3, 440.0, 240.0, 768.0)),
    # created -> each resolve: 1800, 7200 (c1 twice), 1800 (c2); business 1740, 6840, 1800.
    "resolution_time": duration(stats(3, 3600.0, 1800.0, 6120.0), stats(3, 3460.0, 1800.0, 5832.0)),
    "csat": {
        "ratings": 2,
        "satisfied": 1,
        "score": 0.5,
        "resolved_conversations": 2,
        "rated_conversations": 1,
        "response_rate": 0.5,
    },
    # each visitor message -> next agent message: 290, 240, 180 (c1), 60 (c2); c3 unanswered.
    "reply_time": duration(stats(4, 192.5, 210.0, 275.0), stats(4, 180.0, 210.0, 240.0)),
}


async def test_overview_matches_the_hand_computed_answers(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    assert await reports.overview(migrated, DAY) == EXPECTED_OVERVIEW


async def test_per_agent_attribution_follows_transfer_and_reopen(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    rows = {r["agent_id"]: r for r in await reports.breakdown(migrated, DAY, "agent")}
    assert sorted(rows) == ["a1", "a2"]
    a1, a2 = rows["a1"], rows["a2"]
    assert (a1["conversations_handled"], a2["conversations_handled"]) == (2, 2)
    assert a1["first_response_time"]["count"] == 2  # c1 (300) and c2 (180)
    assert (a1["first_response_time"]["avg"], a2["first_response_time"]["avg"]) == (240.0, 1200.0)
    assert a1["resolution_time"]["avg"] == 1800.0
    assert a2["resolution_time"]["count"] == 2  # c1 second resolve (7200) and c2 (1800)
    assert a2["resolution_time"]["avg"] == 4500.0
    assert (a1["csat"]["score"], a2["csat"]["score"]) == (1.0, 0.0)
    assert (a1["conversations_resolved"], a2["conversations_resolved"]) == (0, 2)


async def test_inbox_and_team_breakdowns(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    inboxes = {r["inbox_id"]: r for r in await reports.breakdown(migrated, DAY, "inbox")}
    assert inboxes["web"]["conversations_created"] == 2
    assert inboxes["web"]["wait_time"]["business_hours"]["count"] == 3
    assert inboxes["email"]["conversations_created"] == 1
    assert inboxes["email"]["wait_time"]["count"] == 0
    teams = {r["team_id"]: r for r in await reports.breakdown(migrated, DAY, "team")}
    # c2 moved to "support" by its transfer; c3 has no team and is left out.
    assert sorted(teams) == ["sales", "support"]
    assert teams["support"]["resolution_time"]["avg"] == 1800.0
    assert teams["sales"]["resolution_time"]["count"] == 2


async def test_filters_select_conversations(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    email = await reports.overview(migrated, ReportFilter(TENANT, DAY.start, DAY.end, "email"))
    assert email["conversations_created"] == 1
    assert email["reply_time"]["count"] == 0
    a1 = await reports.overview(migrated, ReportFilter(TENANT, DAY.start, DAY.end, agent_id="a1"))
    assert a1["conversations_created"] == 2
    support = await reports.overview(
        migrated, ReportFilter(TENANT, DAY.start, DAY.end, team_id="support")
    )
    assert support["conversations_created"] == 1
    assert support["reply_time"]["count"] == 1
    later = ReportFilter(TENANT, MONDAY + dt.timedelta(hours=9, minutes=45), DAY.end)
    reopened = await reports.overview(migrated, later)
    # The reopened episode (10:00) and c2 start in range; c1's creation does not.
    assert reopened["conversations_created"] == 2
    assert reopened["wait_time"]["count"] == 2
    assert reopened["resolution_time"]["count"] == 2  # c1 at 11:00 (7200 s from creation), c2


async def test_volume_heatmap_and_live_use_the_tenant_time_zone(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    volume = await reports.volume(migrated, DAY, "day")
    assert volume["time_zone"] == "Europe/Paris"
    assert volume["series"] == [
        {"start": "2024-05-06T00:00:00+02:00", "created": 3, "resolved": 3},
        {"start": "2024-05-07T00:00:00+02:00", "created": 0, "resolved": 0},
    ]
    hourly = await reports.volume(migrated, DAY, "hour")
    assert len(hourly["series"]) == 24  # 00:00 UTC is 02:00 Paris: 02:00 Mon .. 01:00 Tue
    assert {s["start"]: s["created"] for s in hourly["series"] if s["created"]} == {
        "2024-05-06T11:00:00+02:00": 1,
        "2024-05-06T14:00:00+02:00": 1,
        "2024-05-06T15:00:00+02:00": 1,
    }
    weekly = await reports.volume(migrated, DAY, "week")
    assert weekly["series"] == [{"start": "2024-05-06T00:00:00+02:00", "created": 3, "resolved": 3}]
    heat = await reports.heatmap(migrated, DAY)
    assert {(c["weekday"], c["hour"]) for c in heat["cells"] if c["conversations"]} == {
        (1, 11),
        (1, 14),
        (1, 15),
    }
    live = await reports.live(migrated, TENANT, MONDAY + dt.timedelta(hours=14))
    assert live["conversations_waiting"] == 1  # c3, since 13:00
    assert live["longest_wait"] == 3600.0
    assert live["agents_online"] == 1  # a2 went offline at 13:30


async def test_another_tenant_sees_only_its_own(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    other = await reports.overview(migrated, ReportFilter("tenant-b", DAY.start, DAY.end))
    assert other["conversations_created"] == 1
    assert other["csat"]["score"] == 0.0
    assert other["wait_time"]["business_hours"]["count"] == 0  # tenant-a's hours do not apply
    nobody = await reports.overview(migrated, ReportFilter("tenant-c", DAY.start, DAY.end))
    assert nobody["conversations_created"] == 0
    assert nobody["wait_time"] == duration(stats(0, None, None, None), stats(0, None, None, None))


async def _all_reports(store: Store) -> list[Any]:
    return [
        await reports.overview(store, DAY),
        await reports.breakdown(store, DAY, "agent"),
        await reports.breakdown(store, DAY, "inbox"),
        await reports.breakdown(store, DAY, "team"),
        await reports.volume(store, DAY, "hour"),
        await reports.heatmap(store, DAY),
        await reports.live(store, TENANT, MONDAY + dt.timedelta(hours=14)),
    ]


async def test_duplicates_and_out_of_order_change_no_report(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    shuffled = history + history[::3] + history[1::2]
    random.Random(7).shuffle(shuffled)
    # Several small batches (separate parts), as redeliveries would arrive.
    for start in range(0, len(shuffled), 9):
        await ingest_events(migrated, shuffled[start : start + 9])
    await _setup(migrated, ingest_events, history[::-1])  # and everything once more, reversed
    results = await _all_reports(migrated)
    assert results[0] == EXPECTED_OVERVIEW
    rows = await migrated.query("SELECT count() FROM events")
    assert rows[0][0] > len(history)  # the duplicates are stored, and collapse in queries
    await migrated.command("OPTIMIZE TABLE events FINAL")
    assert await _all_reports(migrated) == results


async def test_inboxes_of_one_time_zone_keep_their_own_business_hours(
    migrated: Store, builder: Any, ingest_events: Ingest
) -> None:
    # Two inboxes in Paris (UTC+2 that Monday), the same conversation in each.
    history = builder()
    for conv, inbox in (("w", "web"), ("e", "email")):
        history.created(conv, "09:00", inbox)
        history.assigned(conv, "09:10", "a1")
        history.message(conv, "09:20", "a1", "hello")
        history.resolved(conv, "10:00", "a1")
    await ingest_events(migrated, history.events)
    await migrated.insert(
        "inbox_business_hours",
        [
            # web: 11:05-11:15 Paris = 09:05-09:15 UTC; email: 11:00-13:00 = 09:00-11:00 UTC.
            (TENANT, "web", "Europe/Paris", [11 * 3600 + 300], [11 * 3600 + 900], 1, 1),
            (TENANT, "email", "Europe/Paris", [11 * 3600], [13 * 3600], 1, 1),
        ],
        ("tenant_id", "inbox_id", "time_zone", "starts", "ends", "enabled", "version"),
    )
    expected = {
        # wait 600, first response 1200, resolution 3600 in both; in business hours:
        "web": (300.0, 600.0, 600.0),
        "email": (600.0, 1200.0, 3600.0),
    }

    async def business() -> dict[str, tuple[float, ...]]:
        rows = await reports.breakdown(migrated, DAY, "inbox")
        return {
            r["inbox_id"]: tuple(
                r[f"{m}_time"]["business_hours"]["avg"]
                for m in ("wait", "first_response", "resolution")
            )
            for r in rows
        }

    assert await business() == expected  # live
    await daily.refresh(migrated)
    assert await business() == expected  # pre-aggregated
