"""Taking conversation events off the bus into the engine's durable queue."""

from __future__ import annotations

import datetime as dt

from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.platform.bus import Envelope, payload_of
from livedesk.platform.postgres import Connection

__all__ = ["INTAKE_EVENT_TYPES", "record_conversation"]

INTAKE_EVENT_TYPES = ("conversation.created",)


async def record_conversation(env: Envelope, conn: Connection) -> None:
    """Record a new conversation as waiting (runs once per event, in its transaction)."""
    created = payload_of(env)
    assert isinstance(created, ConversationCreated)
    await conn.execute(
        """INSERT INTO waiting_conversations
               (conversation_id, tenant_id, inbox_id, priority, required_skills, team_id,
                created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (conversation_id) DO NOTHING""",
        env.conversation_id,
        env.tenant_id,
        created.inbox_id,
        created.priority,
        list(created.required_skills),
        created.team_id,
        env.occurred_at.ToDatetime(tzinfo=dt.UTC),
    )
