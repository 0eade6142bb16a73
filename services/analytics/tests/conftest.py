"""Fixtures of the analytics tests: a real chDB store in a temporary directory."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import pytest

from livedesk.analytics.ingest import EventIngestor
from livedesk.analytics.schema import migrate
from livedesk.analytics.store import Store
from livedesk.contracts.events.v1.agent_pb2 import AgentStatusChanged
from livedesk.contracts.events.v1.common_pb2 import (
    ACTOR_KIND_AGENT,
    ACTOR_KIND_VISITOR,
    AGENT_STATUS_OFFLINE,
    AGENT_STATUS_ONLINE,
    AgentStatus,
)
from livedesk.contracts.events.v1.conversation_pb2 import (
    ConversationAssigned,
    ConversationCreated,
    ConversationQueued,
    ConversationReopened,
    ConversationResolved,
    ConversationTransferred,
)
from livedesk.contracts.events.v1.csat_pb2 import CsatSubmitted
from livedesk.contracts.events.v1.message_pb2 import MessageCreated
from livedesk.platform.bus import new_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from google.protobuf.message import Message

    from livedesk.platform.bus import Envelope


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of its own, closed afterwards.

    chDB in a temporary directory by default (chDB hosts one engine per
    process); with ``CLICKHOUSE_URL`` set, a fresh database on that server,
    dropped afterwards, so the same tests run against a real ClickHouse server.
    """
    server = os.environ.get("CLICKHOUSE_URL")
    if not server:
        opened = await Store.open(clickhouse_url=None, chdb_path=str(tmp_path / "chdb"))
        try:
            yield opened
        finally:
            await opened.close()
        return
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await Store.open(clickhouse_url=server, chdb_path="")
    await admin.command(f"CREATE DATABASE {name}")
    opened = await Store.open(
        clickhouse_url=urlunsplit(urlsplit(server)._replace(path=f"/{name}")), chdb_path=""
    )
    try:
        yield opened
    finally:
        await opened.close()
        await admin.command(f"DROP DATABASE IF EXISTS {name}")
        await admin.close()


@pytest.fixture
async def migrated(store: Store) -> Store:
    """``store`` with the schema migrations applied."""
    await migrate(store)
    return store


# --- A hand-built event history with known answers (see docs/metrics.md) ----------------

TENANT = "tenant-a"
OTHER_TENANT = "tenant-b"
MONDAY = dt.datetime(2024, 5, 6, tzinfo=dt.UTC)
"""Monday 2024-05-06 00:00 UTC; Europe/Paris is UTC+2 that day."""


def at(hhmmss: str, day: dt.datetime = MONDAY) -> dt.datetime:
    """``day`` at ``HH:MM[:SS]`` UTC."""
    parts = [int(p) for p in hhmmss.split(":")]
    return day + dt.timedelta(hours=parts[0], minutes=parts[1], seconds=[*parts, 0][2])


class HistoryBuilder:
    """Builds the envelopes of a history, one call per event."""

    def __init__(self, tenant_id: str = TENANT) -> None:
        self.tenant_id = tenant_id
        self.events: list[Envelope] = []
        self._seq: dict[str, int] = {}

    def _add(self, payload: Message, when: dt.datetime, conversation_id: str = "") -> None:
        self.events.append(
            new_event(
                payload,
                tenant_id=self.tenant_id,
                producer="test",
                conversation_id=conversation_id,
                occurred_at=when,
            )
        )

    def created(self, conv: str, when: str, inbox: str, team: str = "") -> None:
        self._add(ConversationCreated(inbox_id=inbox, team_id=team), at(when), conv)

    def queued(self, conv: str, when: str) -> None:
        self._add(ConversationQueued(position=1), at(when), conv)

    def assigned(self, conv: str, when: str, agent: str, team: str = "") -> None:
        self._add(ConversationAssigned(agent_id=agent, team_id=team), at(when), conv)

    def transferred(self, conv: str, when: str, from_agent: str, to_team: str) -> None:
        self._add(
            ConversationTransferred(from_agent_id=from_agent, to_team_id=to_team), at(when), conv
        )

    def resolved(self, conv: str, when: str, agent: str) -> None:
        self._add(ConversationResolved(agent_id=agent, resolved_by=agent), at(when), conv)

    def reopened(self, conv: str, when: str) -> None:
        self._add(ConversationReopened(), at(when), conv)

    def message(self, conv: str, when: str, sender: str, body: str = "hello") -> None:
        seq = self._seq[conv] = self._seq.get(conv, 0) + 1
        kind = ACTOR_KIND_VISITOR if sender.startswith("v") else ACTOR_KIND_AGENT
        created = at(when)
        payload = MessageCreated(
            message_id=str(uuid.uuid4()), seq=seq, sender_kind=kind, sender_id=sender, body=body
        )
        payload.created_at.FromDatetime(created)
        self._add(payload, created, conv)

    def csat(self, conv: str, when: str, rating: int, agent: str) -> None:
        self._add(CsatSubmitted(rating=rating, agent_id=agent), at(when), conv)

    def status(self, agent: str, when: str, status: AgentStatus.ValueType) -> None:
        self._add(AgentStatusChanged(agent_id=agent, status=status), at(when))


def build_history() -> list[Envelope]:
    """Three conversations of TENANT (reopen, transfer, one still waiting) and noise elsewhere."""
    h = HistoryBuilder()
    # c1: answered, resolved, rated 5; reopened, answered by a2, resolved again, rated 3.
    h.created("c1", "09:00", "web", team="sales")
    h.message("c1", "09:00:10", "v1", "My invoice is wrong")
    h.assigned("c1", "09:02", "a1", team="sales")
    h.message("c1", "09:05", "a1", "Let me check the invoice for you")
    h.message("c1", "09:06", "v1", "It says 42 euros")
    h.message("c1", "09:07", "v1", "instead of 24")
    h.message("c1", "09:10", "a1", "Fixed: the refund is on its way")
    h.resolved("c1", "09:30", "a1")
    h.csat("c1", "09:31", 5, "a1")
    h.reopened("c1", "10:00")
    h.queued("c1", "10:00")
    h.assigned("c1", "10:10", "a2", team="sales")
    h.message("c1", "10:20", "a2", "Hello again, how can I help?")
    h.resolved("c1", "11:00", "a2")
    h.csat("c1", "11:05", 3, "a2")
    # c2: answered by a1, transferred to team support, a2 takes it and resolves.
    h.created("c2", "12:00", "web")
    h.assigned("c2", "12:01", "a1")
    h.message("c2", "12:03", "a1", "Hi! Shipping question?")
    h.transferred("c2", "12:05", "a1", "support")
    h.assigned("c2", "12:06", "a2", team="support")
    h.message("c2", "12:07", "v2", "Where is my parcel?")
    h.message("c2", "12:08", "a2", "Your parcel ships tomorrow")
    h.resolved("c2", "12:30", "a2")
    # c3: still waiting.
    h.created("c3", "13:00", "email")
    h.message("c3", "13:00", "v3", "Anyone there? My parcel is late")
    h.status("a1", "08:00", AGENT_STATUS_ONLINE)
    h.status("a2", "08:00", AGENT_STATUS_ONLINE)
    h.status("a2", "13:30", AGENT_STATUS_OFFLINE)

    other = HistoryBuilder(OTHER_TENANT)
    other.created("x1", "09:00", "web")
    other.assigned("x1", "09:01", "a1")
    other.message("x1", "09:02", "a1", "parcel invoice refund")
    other.resolved("x1", "09:03", "a1")
    other.csat("x1", "09:04", 1, "a1")
    return h.events + other.events


@pytest.fixture
def history() -> list[Envelope]:
    """The hand-built history (see :func:`build_history`)."""
    return build_history()


async def ingest(store: Store, events: list[Envelope], batch_size: int = 1000) -> None:
    """Store ``events`` through the real ingestor, concurrently, in batches."""
    ingestor = EventIngestor(store, batch_size=batch_size, flush_interval=0.05)
    try:
        await asyncio.gather(*(ingestor.handle(e) for e in events))
    finally:
        await ingestor.close()


@pytest.fixture
def ingest_events() -> Callable[[Store, list[Envelope]], Awaitable[None]]:
    """:func:`ingest`, for tests (conftest functions cannot be imported)."""
    return ingest


@pytest.fixture
def builder() -> type[HistoryBuilder]:
    """:class:`HistoryBuilder`, for tests that build their own histories."""
    return HistoryBuilder
