"""chat_with_seq (SQL) appends exactly what protobuf would encode, for any seq."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest

from livedesk.chat.message_events import message_event_prefix, with_seq
from livedesk.chat.shards import SHARD_MIGRATIONS
from livedesk.platform.bus import decode
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("seq", [1, 127, 128, 300, 16_384, 2**31, 2**53])
async def test_sql_and_protobuf_agree(pg_database: str, seq: int) -> None:
    pool: asyncpg.Pool = await open_database(pg_database, [PLATFORM_MIGRATIONS, SHARD_MIGRATIONS])
    try:
        prefix = message_event_prefix(
            event_id=str(uuid.uuid4()),
            tenant_id=uuid.uuid4(),
            conversation_id=uuid.uuid4(),
            message_id=uuid.uuid4(),
            sender_kind=1,
            sender_id=uuid.uuid4(),
            body="héllo",
            client_msg_id="c1",
            created_at=dt.datetime.now(dt.UTC),
            producer="chat",
        )
        from_sql: bytes = await pool.fetchval("SELECT chat_with_seq($1, $2)", prefix, seq)
    finally:
        await pool.close()
    event = decode(from_sql)
    assert event.message_created.seq == seq
    assert event.message_created.body == "héllo"
    assert decode(with_seq(prefix, seq)) == event
