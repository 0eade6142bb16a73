"""The per-conversation summaries the reports read (migration 0004, summary.py), on real chDB.

Each batch re-computes the summaries of its conversations from their merged
state, so the edge cases are events split over batches: a message stored
before its conversation.created, redeliveries in later batches, and data
stored before the migration existed.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from livedesk.analytics import reports
from livedesk.analytics.ingest import EVENT_COLUMNS, row_of
from livedesk.analytics.reports import ReportFilter
from livedesk.analytics.schema import MIGRATIONS, migrate
from livedesk.contracts.events.v1.conversation_pb2 import (
    ConversationAssigned,
    ConversationCreated,
    ConversationReopened,
)
from livedesk.platform.bus import new_event

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from google.protobuf.message import Message

    from livedesk.analytics.store import Store
    from livedesk.platform.bus import Envelope

    Ingest = Callable[[Store, list[Envelope]], Awaitable[None]]

TENANT = "tenant-a"
MONDAY = dt.datetime(2024, 5, 6, tzinfo=dt.UTC)
DAY = ReportFilter(TENANT, MONDAY, MONDAY + dt.timedelta(days=1))


def _key_numbers(overview: dict[str, Any]) -> dict[str, Any]:
    """The numbers the hand-built history is known to give (see test_analytics_reports)."""
    return {
        "created": overview["conversations_created"],
        "resolved": overview["conversations_resolved"],
        "wait": (overview["wait_time"]["count"], overview["wait_time"]["p50"]),
        "first_response": (
            overview["first_response_time"]["count"],
            overview["first_response_time"]["avg"],
        ),
        "resolution": (overview["resolution_time"]["count"], overview["resolution_time"]["avg"]),
        "reply": (overview["reply_time"]["count"], overview["reply_time"]["avg"]),
        "csat": overview["csat"]["score"],
    }


EXPECTED = {
    "created": 3,
    "resolved": 2,
    "wait": (3, 120.0),
    "first_response": (3, 560.0),
    "resolution": (3, 3600.0),
    "reply": (4, 192.5),
    "csat": 0.5,
}


async def _summaries(store: Store) -> list[tuple[Any, ...]]:
    return await store.query(
        "SELECT conversation_id, waiting FROM conversation_summary FINAL "
        "WHERE tenant_id = {t:String} ORDER BY conversation_id",
        {"t": TENANT},
    )


async def test_one_event_per_batch_in_reverse_order_gives_the_same_numbers(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    # Every message, assignment and rating is stored (and its conversation
    # re-computed) before the conversation.created that opens it.
    for event in reversed(history):
        await ingest_events(migrated, [event])
    assert _key_numbers(await reports.overview(migrated, DAY)) == EXPECTED
    assert await _summaries(migrated) == [("c1", 0), ("c2", 0), ("c3", 1)]
    live = await reports.live(migrated, TENANT, MONDAY + dt.timedelta(hours=14))
    assert (live["conversations_waiting"], live["longest_wait"]) == (1, 3600.0)


async def test_a_conversation_appears_once_its_creation_is_stored(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    c3 = [e for e in history if e.conversation_id == "c3" and e.tenant_id == TENANT]
    created, message = c3
    await ingest_events(migrated, [message])
    assert await _summaries(migrated) == []
    assert (await reports.live(migrated, TENANT, MONDAY))["conversations_waiting"] == 0
    await ingest_events(migrated, [created])
    assert await _summaries(migrated) == [("c3", 1)]


async def test_redeliveries_in_later_batches_change_nothing(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await ingest_events(migrated, history)
    first = await reports.overview(migrated, DAY)
    for start in range(0, len(history), 5):
        await ingest_events(migrated, history[start : start + 5])
    assert await reports.overview(migrated, DAY) == first
    assert _key_numbers(first) == EXPECTED
    # Several versions of each summary are stored; FINAL reads the newest only.
    rows = await migrated.query("SELECT count() FROM conversation_summary")
    assert rows[0][0] > 3
    await migrated.command("OPTIMIZE TABLE conversation_summary FINAL")
    await migrated.command("OPTIMIZE TABLE conversation_state FINAL")
    assert await reports.overview(migrated, DAY) == first


async def test_the_migration_summarises_events_stored_before_it(
    store: Store, history: list[Envelope]
) -> None:
    before = [m for m in MIGRATIONS if m.version < 4]
    await migrate(store, before)
    now = dt.datetime.now(dt.UTC)
    await store.insert("events", [row_of(e, now) for e in history], EVENT_COLUMNS)
    assert await migrate(store) == [m.version for m in MIGRATIONS if m.version >= 4]
    assert _key_numbers(await reports.overview(store, DAY)) == EXPECTED
    assert await _summaries(store) == [("c1", 0), ("c2", 0), ("c3", 1)]


def _lifecycle(payload: Message, minutes: int) -> Envelope:
    return new_event(
        payload,
        tenant_id=TENANT,
        producer="test",
        conversation_id="late",
        occurred_at=MONDAY + dt.timedelta(hours=9, minutes=minutes),
    )


async def test_a_late_reopen_takes_the_wait_away_from_the_episode_it_splits(
    migrated: Store, ingest_events: Ingest
) -> None:
    await ingest_events(
        migrated,
        [
            _lifecycle(ConversationCreated(inbox_id="web"), 0),
            _lifecycle(ConversationAssigned(agent_id="a1"), 10),
        ],
    )
    wait = (await reports.overview(migrated, DAY))["wait_time"]
    assert (wait["count"], wait["p50"]) == (1, 600.0)
    # A reopen at 09:05 arrives late: the episode started at 09:00 now ends
    # unassigned (no wait counted for it), the one started at 09:05 waited 5 minutes.
    await ingest_events(migrated, [_lifecycle(ConversationReopened(), 5)])
    wait = (await reports.overview(migrated, DAY))["wait_time"]
    assert (wait["count"], wait["p50"]) == (1, 300.0)
    agents = await reports.breakdown(migrated, DAY, "agent")
    assert [(a["agent_id"], a["wait_time"]["count"]) for a in agents] == [("a1", 1)]
