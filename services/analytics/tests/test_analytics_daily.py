"""Reports read from the per-day pre-aggregates (daily.py) give exactly the live numbers.

Each test computes the reports live first (no day pre-aggregated yet), then
refreshes and checks that the range's days are now read pre-aggregated and
that every number is the same; and that whatever changes a day after it was
pre-aggregated (a late event, business hours, an erasure) is counted at once.
A business-hours change leaves the days pre-aggregated: only the changed inbox's
business seconds are derived again, from the stored items.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from livedesk.analytics import daily, reports
from livedesk.analytics.api import create_app
from livedesk.analytics.reports import ReportFilter
from livedesk.contracts.events.v1.conversation_pb2 import ConversationPurged
from livedesk.platform.auth import AuthSettings, load_issuer, load_verifier
from livedesk.platform.bus import new_event
from livedesk.platform.health import HealthChecks

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from livedesk.analytics.store import Store
    from livedesk.platform.bus import Envelope

    Ingest = Callable[[Store, list[Envelope]], Awaitable[None]]

TENANT = "tenant-a"
MONDAY = dt.datetime(2024, 5, 6, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)
NOW = dt.timedelta(minutes=17, seconds=23, milliseconds=456)
WEB_HOURS = ("web", "Europe/Paris", [11 * 3600 + 60, 12 * 3600 + 600], [12 * 3600 + 300, 19 * 3600])
RANGES = [
    ReportFilter(TENANT, MONDAY, MONDAY + DAY),
    ReportFilter(TENANT, MONDAY + 9 * HOUR + dt.timedelta(minutes=45), MONDAY + DAY),
    ReportFilter(TENANT, MONDAY - DAY, MONDAY + 2 * DAY),
    ReportFilter(TENANT, MONDAY - DAY, MONDAY + 2 * DAY, inbox_id="web"),
    ReportFilter(TENANT, MONDAY, MONDAY + DAY, team_id="support"),
    ReportFilter(TENANT, MONDAY - DAY, MONDAY + DAY, agent_id="a1"),
    ReportFilter(TENANT, MONDAY + 10 * HOUR, MONDAY + 2 * DAY + 3 * HOUR),
    # Not whole UTC days: the whole hours of partial days come from report_hourly.
    ReportFilter(TENANT, MONDAY + 10 * HOUR, MONDAY + 12 * HOUR),  # c1 reopened at 10:00
    ReportFilter(TENANT, MONDAY + 9 * HOUR, MONDAY + 11 * HOUR),  # c1's last resolve at 11:00
    ReportFilter(TENANT, MONDAY + 9 * HOUR + 20 * MINUTE, MONDAY + 12 * HOUR + 5 * MINUTE),
    ReportFilter(TENANT, MONDAY - DAY + 4 * HOUR, MONDAY + 4 * HOUR),  # UTC-4 midnights
    ReportFilter(TENANT, MONDAY + 4 * HOUR, MONDAY + DAY + 4 * HOUR),
    ReportFilter(TENANT, MONDAY + 4 * HOUR, MONDAY + DAY + 4 * HOUR, agent_id="a2"),
    ReportFilter(TENANT, MONDAY + 9 * HOUR, MONDAY + 12 * HOUR + 30 * MINUTE, agent_id="a1"),
    ReportFilter(TENANT, MONDAY + 9 * HOUR, MONDAY + 13 * HOUR + 30 * MINUTE, inbox_id="web"),
    # Partial hours, read from the hours' items: c1's resolves at 09:30 and 11:00 decide
    # which one counts, a2's assignment at 12:06 is handled after a1's at 12:01.
    ReportFilter(TENANT, MONDAY + 9 * HOUR + 31 * MINUTE, MONDAY + 11 * HOUR + 30 * MINUTE),
    ReportFilter(TENANT, MONDAY + 9 * HOUR + 30 * MINUTE, MONDAY + 10 * HOUR + 15 * MINUTE),
    ReportFilter(TENANT, MONDAY + 12 * HOUR + 2 * MINUTE, MONDAY + 12 * HOUR + 20 * MINUTE),
    ReportFilter(
        TENANT, MONDAY + 9 * HOUR + MINUTE, MONDAY + 9 * HOUR + 30 * MINUTE, agent_id="a1"
    ),
    ReportFilter(TENANT, MONDAY + 12 * HOUR + 5 * MINUTE, MONDAY + 13 * HOUR, team_id="support"),
    # The API's default: up to "now", a mid-hour instant (here one day).
    ReportFilter(TENANT, MONDAY - DAY + 10 * HOUR + NOW, MONDAY + 10 * HOUR + NOW),
    ReportFilter(TENANT, MONDAY + 10 * HOUR + NOW, MONDAY + DAY + 10 * HOUR + NOW, inbox_id="web"),
]


async def _hours(store: Store, windows: tuple[str, str, list[int], list[int]] = WEB_HOURS) -> None:
    await store.insert(
        "inbox_business_hours",
        [(TENANT, *windows, 1, time.time_ns())],
        ("tenant_id", "inbox_id", "time_zone", "starts", "ends", "enabled", "version"),
    )


async def _setup(store: Store, ingest: Ingest, events: list[Envelope]) -> None:
    await ingest(store, events)
    await _hours(store)
    await store.insert(
        "tenant_settings", [(TENANT, "Europe/Paris", 1)], ("tenant_id", "time_zone", "version")
    )


async def _reports(store: Store, flt: ReportFilter) -> dict[str, Any]:
    return {
        "overview": await reports.overview(store, flt),
        "agents": await reports.breakdown(store, flt, "agent"),
        "inboxes": await reports.breakdown(store, flt, "inbox"),
        "teams": await reports.breakdown(store, flt, "team"),
        "hourly": await reports.volume(store, flt, "hour"),
        "daily": await reports.volume(store, flt, "day"),
        "weekly": await reports.volume(store, flt, "week"),
        "heatmap": await reports.heatmap(store, flt),
    }


async def _all(store: Store) -> list[dict[str, Any]]:
    return [await _reports(store, flt) for flt in RANGES]


async def _clean_days(store: Store, flt: ReportFilter) -> list[dt.date]:
    return [day for day, _, _ in (await reports.day_plan(store, flt)).clean]


async def test_pre_aggregated_days_give_the_live_numbers(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    assert await _clean_days(migrated, RANGES[0]) == []
    live = await _all(migrated)
    assert live[0]["overview"]["conversations_created"] == 3  # the live path is the reference
    assert await daily.refresh(migrated) >= 2  # tenant-a's Monday, tenant-b's
    plan = await reports.day_plan(migrated, RANGES[0])
    assert [d for d, _, _ in plan.clean] == [MONDAY.date()]
    assert plan.live == ()  # the whole range is read pre-aggregated
    assert await _all(migrated) == live
    assert await daily.refresh(migrated) == 0  # nothing changed since


async def test_partial_days_read_their_whole_hours_pre_aggregated(
    migrated: Store,
    history: list[Envelope],
    ingest_events: Ingest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _setup(migrated, ingest_events, history)
    await daily.refresh(migrated)
    monday = await reports.day_plan(migrated, RANGES[0])
    stamp = monday.clean[0]
    # 10:00-12:00: two hours of Monday, nothing live.
    plan = await reports.day_plan(migrated, RANGES[7])
    assert (plan.clean, plan.hours, plan.live) == ((), ((stamp, 10, 12),), ())
    # 09:20-12:05: 10:00-12:00 from the hours, the partial hours from their items.
    plan = await reports.day_plan(migrated, RANGES[9])
    assert plan.hours == ((stamp, 10, 12),)
    ms = reports._ms
    assert plan.partial == (
        (stamp, 9, (ms(RANGES[9].start), ms(MONDAY + 10 * HOUR))),
        (stamp, 12, (ms(MONDAY + 12 * HOUR), ms(RANGES[9].end))),
    )
    assert plan.live == ()
    # Inside one hour, and two partial hours with no whole hour between them.
    plan = await reports.day_plan(migrated, RANGES[17])
    assert (plan.hours, plan.partial, plan.live) == (
        (),
        ((stamp, 12, (ms(RANGES[17].start), ms(RANGES[17].end))),),
        (),
    )
    plan = await reports.day_plan(migrated, RANGES[16])
    assert (plan.hours, plan.live) == ((), ())
    assert [(hour, w) for _, hour, w in plan.partial] == [
        (9, (ms(RANGES[16].start), ms(MONDAY + 10 * HOUR))),
        (10, (ms(MONDAY + 10 * HOUR), ms(RANGES[16].end))),
    ]
    # From a UTC-4 midnight: Monday's hours 4-23 (Tuesday has no data: live, empty).
    plan = await reports.day_plan(migrated, RANGES[11])
    assert plan.hours == ((stamp, 4, 24),)
    assert plan.live == ((ms(MONDAY + DAY), ms(RANGES[11].end)),)
    # The same numbers as computed live (every range is also compared in the test above).
    assert await _reports(migrated, RANGES[9]) == await _live_reports(
        migrated, RANGES[9], monkeypatch
    )
    c1 = (await reports.overview(migrated, RANGES[8]))["csat"]
    assert (c1["resolved_conversations"], c1["rated_conversations"]) == (1, 1)  # 09:30 counts
    for flt in RANGES[15:]:
        assert await _reports(migrated, flt) == await _live_reports(migrated, flt, monkeypatch)
    # 09:31-11:30: c1's resolve at 11:00 (a partial hour's item) is the one counted.
    agents = {r["agent_id"]: r for r in await reports.breakdown(migrated, RANGES[15], "agent")}
    assert (agents["a2"]["conversations_resolved"], agents["a2"]["conversations_handled"]) == (1, 1)
    # A day changed since its computation: its partial hours are live again.
    await daily.mark_days(migrated, [(TENANT, MONDAY.date())])
    plan = await reports.day_plan(migrated, RANGES[9])
    assert (plan.hours, plan.partial, plan.live) == (
        (),
        (),
        ((ms(RANGES[9].start), ms(RANGES[9].end)),),
    )


async def _live_reports(
    store: Store, flt: ReportFilter, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The reports of ``flt`` with every pre-aggregate ignored."""

    async def live_plan(store: Store, flt: ReportFilter) -> reports.DayPlan:
        return reports._plan(flt, ())

    with monkeypatch.context() as patch:
        patch.setattr(reports, "day_plan", live_plan)
        return await _reports(store, flt)


async def test_conversations_spanning_days_count_once_per_range(
    migrated: Store, builder: Any, ingest_events: Ingest
) -> None:
    h = builder()
    # d1: resolved on Monday by a1, reopened on Tuesday, resolved again by a2, rated.
    h.created("d1", "09:00", "web", team="sales")
    h.assigned("d1", "09:01", "a1")
    h.message("d1", "09:02", "a1", "hello")
    h.resolved("d1", "10:00", "a1")
    h.reopened("d1", "33:00")  # Tuesday 09:00
    h.assigned("d1", "33:01", "a1")
    h.assigned("d1", "33:02", "a2")
    h.resolved("d1", "34:00", "a2")
    h.csat("d1", "34:05", 4, "a2")
    # d2: open from Monday to Wednesday, nothing counted on Tuesday.
    h.created("d2", "12:00", "email")
    h.resolved("d2", "60:00", "a3")
    await ingest_events(migrated, h.events)
    monday = ReportFilter(TENANT, MONDAY, MONDAY + DAY)
    both = ReportFilter(TENANT, MONDAY, MONDAY + 2 * DAY)
    ranges = [monday, both, ReportFilter(TENANT, MONDAY + DAY, MONDAY + 2 * DAY)]
    live = [await _reports(migrated, flt) for flt in ranges]
    await daily.refresh(migrated)
    assert await _clean_days(migrated, both) == [MONDAY.date(), (MONDAY + DAY).date()]
    assert [await _reports(migrated, flt) for flt in ranges] == live
    whole = live[1]
    assert whole["overview"]["conversations_resolved"] == 1
    assert whole["overview"]["resolution_time"]["count"] == 2  # each resolve counts
    assert whole["overview"]["csat"]["rated_conversations"] == 1
    agents = {r["agent_id"]: r for r in whole["agents"]}
    # a1 was assigned on both days: one conversation handled; the last resolve is a2's.
    assert agents["a1"]["conversations_handled"] == 1
    assert (agents["a1"]["conversations_resolved"], agents["a2"]["conversations_resolved"]) == (
        0,
        1,
    )
    assert {r["agent_id"]: r["conversations_resolved"] for r in live[0]["agents"]} == {"a1": 1}
    # A breakdown lists what has something counted in the range: not d2's inbox on Tuesday.
    assert [r["inbox_id"] for r in live[2]["inboxes"]] == ["web"]
    assert [r["inbox_id"] for r in live[1]["inboxes"]] == ["email", "web"]


async def test_a_late_event_makes_its_days_live_until_refreshed(
    migrated: Store, history: list[Envelope], builder: Any, ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    await daily.refresh(migrated)
    before = await _all(migrated)
    late = builder()
    late.assigned("c3", "13:30", "a1")  # c3 waited 30 minutes
    late.message("c3", "13:40", "a1", "sorry for the wait")
    late.resolved("c3", "30:00", "a1")  # Tuesday 06:00
    await ingest_events(migrated, late.events)
    assert await _clean_days(migrated, RANGES[2]) == []  # Monday and Tuesday changed
    after = await _all(migrated)
    assert (
        after[0]["overview"]["wait_time"]["count"]
        == before[0]["overview"]["wait_time"]["count"] + 1
    )
    assert after[2]["overview"]["conversations_resolved"] == 3
    await daily.refresh(migrated)
    assert await _clean_days(migrated, RANGES[2]) == [MONDAY.date(), (MONDAY + DAY).date()]
    assert await _all(migrated) == after


async def test_a_changed_day_reads_its_unchanged_hours_pre_aggregated(
    migrated: Store,
    history: list[Envelope],
    builder: Any,
    ingest_events: Ingest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _setup(migrated, ingest_events, history)
    await daily.refresh(migrated)
    stamp = (await reports.day_plan(migrated, RANGES[0])).clean[0]
    late = builder()
    late.assigned("c3", "13:30", "a1")  # c3 (created 13:00) changes: only hour 13 of Monday
    await ingest_events(migrated, late.events)
    plan = await reports.day_plan(migrated, RANGES[0])
    ms = reports._ms
    dirty = plan.fresh[0]
    assert (dirty[0], dirty[2]) == (stamp[0], stamp[2])  # the same computation, now outdated
    assert plan.clean == ()
    assert plan.hours == ((dirty, 0, 13), (dirty, 14, 24))
    assert plan.live == ((ms(MONDAY + 13 * HOUR), ms(MONDAY + 14 * HOUR)),)
    for flt in RANGES:
        assert await _reports(migrated, flt) == await _live_reports(migrated, flt, monkeypatch)
    # Another change in the hour already live does not invalidate the plan; one in an
    # hour it reads pre-aggregated does.
    late = builder()
    late.message("c3", "13:40", "a1", "sorry for the wait")
    await ingest_events(migrated, late.events)
    assert await reports._plan_still_holds(migrated, RANGES[0], plan)
    late = builder()
    late.message("c2", "12:40", "a2", "anything else?")
    await ingest_events(migrated, late.events)
    assert not await reports._plan_still_holds(migrated, RANGES[0], plan)
    plan = await reports.day_plan(migrated, RANGES[0])
    assert plan.live == ((ms(MONDAY + 12 * HOUR), ms(MONDAY + 14 * HOUR)),)
    assert await _reports(migrated, RANGES[9]) == await _live_reports(
        migrated, RANGES[9], monkeypatch
    )
    # Erasures change every hour of their days: nothing read from them.
    await daily.mark_tenant_dirty(migrated, TENANT)
    plan = await reports.day_plan(migrated, RANGES[0])
    assert (plan.clean, plan.hours, plan.partial, plan.fresh) == ((), (), (), ())


EMAIL_HOURS = (
    "email",
    "America/New_York",
    [9 * 3600, 86400 + 9 * 3600],  # Monday and Tuesday 09:00-17:00 New York
    [17 * 3600, 86400 + 17 * 3600],
)


async def _set_hours(store: Store, inbox: str, windows: list[dict[str, Any]] | None) -> None:
    """PUT (or, without ``windows``, DELETE) an inbox's business hours through the API."""
    auth = AuthSettings(livedesk_env="test")
    admin = load_issuer(auth).issue(
        subject="u1",
        tenant_id=TENANT,
        role="admin",
        token_type="access",
        ttl=dt.timedelta(minutes=5),
    )
    app = create_app(store, HealthChecks(), load_verifier(auth))
    url = f"/api/v1/reports/settings/business-hours/{inbox}"
    headers = {"Authorization": f"Bearer {admin}"}
    async with TestClient(TestServer(app)) as client:
        if windows is None:
            resp = await client.delete(url, headers=headers)
            assert resp.status == 204
        else:
            body = {"time_zone": "UTC", "windows": windows}
            resp = await client.put(url, json=body, headers=headers)
            assert resp.status == 200


async def _same_as_live(
    store: Store, monkeypatch: pytest.MonkeyPatch, ranges: list[ReportFilter] = RANGES
) -> list[dict[str, Any]]:
    """Every report of ``ranges``, checked equal to the fully live computation."""
    result = []
    for flt in ranges:
        got = await _reports(store, flt)
        assert got == await _live_reports(store, flt, monkeypatch), flt
        result.append(got)
    return result


def _by_inbox(report: dict[str, Any]) -> dict[str, Any]:
    return {row["inbox_id"]: row for row in report["inboxes"]}


async def test_changed_business_hours_apply_to_pre_aggregated_days(
    migrated: Store,
    history: list[Envelope],
    builder: Any,
    ingest_events: Ingest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two inboxes with business hours and values on two days; only web's hours change.
    more = builder()
    more.created("e1", "13:10", "email", team="support")
    more.message("e1", "13:11", "v4", "hello?")
    more.assigned("e1", "13:20", "a1")
    more.message("e1", "13:25", "a1", "hi")
    more.resolved("e1", "14:00", "a1")
    more.created("w1", "32:40", "web")  # Tuesday 08:40
    more.message("w1", "32:41", "v5", "anyone?")
    more.assigned("w1", "33:10", "a2")
    more.message("w1", "33:20", "a2", "here")
    more.resolved("w1", "34:00", "a2")
    more.created("e2", "37:00", "email")  # Tuesday 13:00
    more.assigned("e2", "37:30", "a1")
    more.message("e2", "37:31", "a1", "hello")
    more.resolved("e2", "38:00", "a1")
    await _setup(migrated, ingest_events, history + more.events)
    await _hours(migrated, EMAIL_HOURS)
    await daily.refresh(migrated)
    two_days = RANGES[2]  # Sunday to Tuesday
    before = await _all(migrated)
    await _set_hours(
        migrated,
        "web",
        [
            {"weekday": 1, "start": "09:00", "end": "10:00"},
            {"weekday": 2, "start": "09:00", "end": "09:30"},
        ],
    )
    # Right after the change (before any refresh): every day is still read
    # pre-aggregated, web's business seconds are derived again from the items.
    plan = await reports.day_plan(migrated, two_days)
    assert [d for d, _, _ in plan.clean] == [MONDAY.date(), (MONDAY + DAY).date()]
    assert plan.live == ((reports._ms(MONDAY - DAY), reports._ms(MONDAY)),)  # no data on Sunday
    assert [inbox for inbox, _ in plan.changed_inboxes()] == ["web"]
    assert plan.changed_inboxes("email") == ()
    assert await daily.write_hours_fix(migrated, TENANT) == 0  # the PUT wrote it, once
    changed = await _same_as_live(migrated, monkeypatch)  # from report_hours_fix
    with monkeypatch.context() as patch:  # before (or without) it: from the items

        async def nothing_fixed(store: Store, tenant_id: str, version: int) -> dict[Any, int]:
            return {}

        patch.setattr(reports, "fixed", nothing_fixed)
        assert await _same_as_live(migrated, monkeypatch) == changed
    web, email = _by_inbox(changed[0])["web"], _by_inbox(changed[0])["email"]
    # waits 120 (c1, 09:00-09:02), 600 (c1 reopened at 10:00: none inside), 60 (c2: none).
    assert web["wait_time"]["business_hours"]["avg"] == 40.0
    assert _by_inbox(before[0])["web"]["wait_time"]["business_hours"]["avg"] != 40.0
    assert email == _by_inbox(before[0])["email"]  # its hours did not change
    assert email["wait_time"]["business_hours"]["count"] == 1
    assert changed[0]["overview"] != before[0]["overview"]
    # Ignoring the change would give the old business seconds.
    with monkeypatch.context() as patch:

        def no_changes(plan: reports.DayPlan, inbox_id: str = "") -> tuple[tuple[str, int], ...]:
            return ()

        patch.setattr(reports.DayPlan, "changed_inboxes", no_changes)
        assert await _reports(migrated, RANGES[0]) == before[0] != changed[0]
    # The refresher has re-computed one day (Tuesday, newest first) but not Monday yet.
    with monkeypatch.context() as patch:
        patch.setattr(daily, "HOURS_STALE_DAYS", 1)
        assert await daily.refresh(migrated) == 1
    plan = await reports.day_plan(migrated, two_days)
    monday, tuesday = plan.clean
    changes = dict(plan.changed_inboxes())
    assert monday[2] <= changes["web"] < tuesday[2]
    assert await _same_as_live(migrated, monkeypatch) == changed
    # Removing email's hours: its durations leave the business-hours figures.
    await _set_hours(migrated, "email", None)
    plan = await reports.day_plan(migrated, two_days)
    assert [inbox for inbox, _ in plan.changed_inboxes()] == ["email", "web"]
    removed = await _same_as_live(migrated, monkeypatch)
    assert _by_inbox(removed[2])["email"]["wait_time"]["business_hours"]["count"] == 0
    assert (
        _by_inbox(removed[2])["web"]
        == _by_inbox((await _same_as_live(migrated, monkeypatch, [two_days]))[0])["web"]
    )
    # The business seconds written for web's change alone are deleted (email's
    # change replaced them), those of computations replaced by a refresh too.
    monkeypatch.setattr(daily, "KEEP_OLD", 0.0)

    async def fix_versions() -> list[int]:
        rows = await migrated.query("SELECT DISTINCT version FROM report_hours_fix ORDER BY 1")
        return [int(v) for (v,) in rows]

    assert len(await fix_versions()) == 2
    await daily.delete_replaced(migrated, [TENANT])
    assert await fix_versions() == [max(at for _, at in plan.changes)]
    assert await _all(migrated) == removed
    # Once the refresher caught up, nothing is derived again and nothing changes.
    assert await daily.refresh(migrated) == 2
    plan = await reports.day_plan(migrated, two_days)
    assert (len(plan.clean), plan.changed_inboxes()) == (2, ())
    assert await _all(migrated) == removed
    assert await daily.refresh(migrated) == 0
    await daily.delete_replaced(migrated, [TENANT])
    assert await fix_versions() == []


async def test_an_erased_conversation_leaves_the_pre_aggregates_at_once(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    await daily.refresh(migrated)
    purge = new_event(
        ConversationPurged(retention_days=30),
        tenant_id=TENANT,
        producer="test",
        conversation_id="c1",
        occurred_at=MONDAY + 3 * DAY,
    )
    await ingest_events(migrated, [purge])
    for table in ("report_daily", "report_hourly"):
        rows = await migrated.query(
            f"SELECT count() FROM {table} WHERE tenant_id = {{t:String}}", {"t": TENANT}
        )
        assert rows[0][0] == 0  # no value of c1 kept, not even aggregated
    erased = await _all(migrated)
    assert erased[0]["overview"]["conversations_created"] == 2
    assert erased[0]["overview"]["csat"]["ratings"] == 0
    await daily.refresh(migrated)
    assert await _clean_days(migrated, RANGES[0]) == [MONDAY.date()]
    assert await _all(migrated) == erased


async def test_replaced_computations_are_deleted(
    migrated: Store, history: list[Envelope], ingest_events: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _setup(migrated, ingest_events, history)
    monkeypatch.setattr(daily, "KEEP_OLD", 0.0)
    await daily.refresh(migrated)
    await daily.mark_tenant_dirty(migrated, TENANT)
    await daily.refresh(migrated)
    for table in ("report_daily", "report_hourly"):
        rows = await migrated.query(
            f"SELECT DISTINCT computed_at FROM {table} WHERE tenant_id = {{t:String}}",
            {"t": TENANT},
        )
        assert len(rows) == 1
    assert await _clean_days(migrated, RANGES[0]) == [MONDAY.date()]


async def test_the_refresher_can_leave_replaced_computations_for_later(
    migrated: Store, history: list[Envelope], ingest_events: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _setup(migrated, ingest_events, history)
    monkeypatch.setattr(daily, "KEEP_OLD", 0.0)
    await daily.refresh(migrated)
    live = await _all(migrated)
    await daily.mark_tenant_dirty(migrated, TENANT)
    refreshed: set[str] = set()
    await daily.refresh(migrated, delete_old=False, refreshed=refreshed)
    assert TENANT in refreshed

    async def computations(table: str) -> int:
        rows = await migrated.query(
            f"SELECT uniqExact(computed_at) FROM {table} WHERE tenant_id = {{t:String}}",
            {"t": TENANT},
        )
        return int(rows[0][0])

    assert [await computations(t) for t in ("report_daily", "report_hourly")] == [2, 2]
    assert await _all(migrated) == live  # the replaced rows are not read
    await daily.delete_replaced(migrated, sorted(refreshed))
    assert [await computations(t) for t in ("report_daily", "report_hourly")] == [1, 1]
    assert await _all(migrated) == live


async def test_a_report_planned_on_a_day_that_changes_is_computed_again(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await _setup(migrated, ingest_events, history)
    await daily.refresh(migrated)
    plans: list[reports.DayPlan] = []

    async def compute(plan: reports.DayPlan) -> int:
        plans.append(plan)
        if len(plans) == 1:  # the day changes while the report runs
            await daily.mark_tenant_dirty(migrated, TENANT)
        return len(plans)

    replans = REGISTRY.get_sample_value("livedesk_analytics_report_replans_total") or 0
    assert await reports._planned(migrated, RANGES[0], compute) == 2
    assert [len(p.clean) for p in plans] == [1, 0]
    assert REGISTRY.get_sample_value("livedesk_analytics_report_replans_total") == replans + 1
