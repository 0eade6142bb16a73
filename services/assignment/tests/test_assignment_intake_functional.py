"""Intake of conversation events into the engine's durable queue (real PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from livedesk.assignment.intake import record_conversation
from livedesk.contracts.events.v1.common_pb2 import Priority
from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.platform.bus import DUPLICATE, new_event
from livedesk.platform.bus.idempotency import PgIdempotency
from livedesk.platform.ids import uuid7_str
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, migrate, open_database

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_database(pg_database, [PLATFORM_MIGRATIONS, "livedesk.assignment.migrations"])
    yield pool
    await pool.close()


async def test_created_conversation_is_recorded_once(pool: asyncpg.Pool) -> None:
    handle = PgIdempotency(pool, "assignment").wrap(record_conversation)
    event = new_event(
        ConversationCreated(
            inbox_id="web", priority=Priority.PRIORITY_HIGH, required_skills=["billing"]
        ),
        tenant_id=uuid7_str(),
        producer="chat",
        conversation_id=uuid7_str(),
    )
    assert await handle(event) is None
    assert await handle(event) == DUPLICATE

    rows = await pool.fetch("SELECT * FROM waiting_conversations")
    assert len(rows) == 1
    assert str(rows[0]["conversation_id"]) == event.conversation_id
    assert rows[0]["priority"] == Priority.PRIORITY_HIGH
    assert rows[0]["required_skills"] == ["billing"]
    assert rows[0]["created_at"] == event.occurred_at.ToDatetime(
        tzinfo=rows[0]["created_at"].tzinfo
    )


async def test_migrations_are_idempotent(pool: asyncpg.Pool) -> None:
    assert await migrate(pool, "livedesk.assignment.migrations") == []
