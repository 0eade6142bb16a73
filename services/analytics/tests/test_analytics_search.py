"""Full-text search on a real chDB engine: words, phrases, tenants, filters, pagination."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest

from livedesk.analytics.search import (
    SearchQuery,
    SearchQueryError,
    highlight,
    parse_query,
    search_messages,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from livedesk.analytics.store import Store
    from livedesk.platform.bus import Envelope

    Ingest = Callable[[Store, list[Envelope]], Awaitable[None]]


def test_parse_query_splits_words_and_phrases() -> None:
    q = parse_query('Refund  "the  INVOICE for" parcel "x"')
    assert q == SearchQuery(words=("refund", "parcel", "x"), phrases=(("the", "invoice", "for"),))
    assert q.tokens == ["refund", "parcel", "x", "the", "invoice", "for"]
    with pytest.raises(SearchQueryError):
        parse_query(' "" !! ')


def test_highlight_marks_whole_words_and_phrases() -> None:
    q = parse_query('parcel "ships tomorrow"')
    body = "Your Parcel ships tomorrow; parcels too"
    assert highlight(body, q) == [(5, 11), (12, 26)]


async def _search(store: Store, text: str, **kw: object) -> list[str]:
    page = await search_messages(
        store,
        tenant_id="tenant-a",
        query=parse_query(text),
        start=None,
        end=None,
        **kw,  # type: ignore[arg-type]
    )
    return [item["body"] for item in page["items"]]


async def test_words_phrases_tenant_and_filters(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> None:
    await ingest_events(migrated, history)
    # Newest first; tenant-b's "parcel invoice refund" never shows.
    assert await _search(migrated, "parcel") == [
        "Anyone there? My parcel is late",
        "Your parcel ships tomorrow",
        "Where is my parcel?",
    ]
    assert await _search(migrated, "INVOICE") == [
        "Let me check the invoice for you",
        "My invoice is wrong",
    ]
    assert await _search(migrated, '"parcel ships"') == ["Your parcel ships tomorrow"]
    assert await _search(migrated, '"ships parcel"') == []
    assert await _search(migrated, "parcel late") == ["Anyone there? My parcel is late"]
    assert await _search(migrated, "parc") == []  # whole words only
    assert await _search(migrated, "parcel", inbox_id="email") == [
        "Anyone there? My parcel is late"
    ]
    assert await _search(migrated, "parcel", agent_id="a2") == [
        "Your parcel ships tomorrow",
        "Where is my parcel?",
    ]
    assert await _search(migrated, "parcel", status="queued") == ["Anyone there? My parcel is late"]
    assert await _search(migrated, "parcel", status="resolved") == [
        "Your parcel ships tomorrow",
        "Where is my parcel?",
    ]
    page = await search_messages(
        migrated,
        tenant_id="tenant-a",
        query=parse_query("parcel"),
        start=dt.datetime(2024, 5, 6, 12, 7, 30, tzinfo=dt.UTC),
        end=dt.datetime(2024, 5, 6, 12, 30, tzinfo=dt.UTC),
    )
    assert [i["body"] for i in page["items"]] == ["Your parcel ships tomorrow"]
    item = page["items"][0]
    assert item["body_highlighted"] == "Your <mark>parcel</mark> ships tomorrow"
    assert item["created_at"] == "2024-05-06T12:08:00Z"
    assert item["sender_kind"] == "agent"


async def test_pagination_is_stable_and_complete(migrated: Store, ingest_events: Ingest) -> None:
    from livedesk.contracts.events.v1.message_pb2 import MessageCreated
    from livedesk.platform.bus import new_event

    at = dt.datetime(2024, 5, 6, 9, tzinfo=dt.UTC)
    events = []
    for i in range(23):
        # Pairs share a timestamp: the message id breaks the tie.
        created = at + dt.timedelta(seconds=i // 2)
        payload = MessageCreated(message_id=f"m{i:02d}", seq=i + 1, body=f"order {i} shipped")
        payload.created_at.FromDatetime(created)
        events.append(
            new_event(
                payload,
                tenant_id="tenant-a",
                producer="t",
                conversation_id="c",
                occurred_at=created,
            )
        )
    await ingest_events(migrated, events)
    seen: list[str] = []
    cursor = None
    while True:
        page = await search_messages(
            migrated,
            tenant_id="tenant-a",
            query=parse_query("shipped order"),
            start=None,
            end=None,
            limit=5,
            cursor=cursor,
        )
        seen += [i["message_id"] for i in page["items"]]
        # New matching messages older than the cursor would show up, newer ones never shift pages.
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"m{i:02d}" for i in reversed(range(23))]
    with pytest.raises(SearchQueryError, match="cursor"):
        await search_messages(
            migrated,
            tenant_id="tenant-a",
            query=parse_query("x"),
            start=None,
            end=None,
            cursor="!!not-a-cursor",
        )
