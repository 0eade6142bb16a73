"""The conversation data-access layer: every read and write of conversation data goes here.

Keyed by conversation_id so that sharding and read replicas can later be
added behind this seam without touching handlers.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

from livedesk.contracts.events.v1.common_pb2 import Priority
from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.platform.bus import new_event
from livedesk.platform.bus.outbox import Outbox
from livedesk.platform.ids import uuid7

__all__ = ["Conversation", "ConversationStore", "NewConversation"]

PRODUCER = "chat"


@dataclass(frozen=True, slots=True)
class NewConversation:
    """What a caller supplies to open a conversation."""

    tenant_id: uuid.UUID
    inbox_id: str
    visitor_id: str = ""
    subject: str = ""
    priority: int = Priority.PRIORITY_NORMAL


@dataclass(frozen=True, slots=True)
class Conversation:
    """A stored conversation."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    inbox_id: str
    visitor_id: str
    status: str
    priority: int
    subject: str
    created_at: dt.datetime


class ConversationStore:
    """Conversations in PostgreSQL, each change committed with its outbox event."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, new: NewConversation) -> Conversation:
        """Insert a conversation and its ``conversation.created`` event in one transaction."""
        conversation_id = uuid7()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO conversations
                       (id, tenant_id, inbox_id, visitor_id, priority, subject)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   RETURNING *""",
                conversation_id,
                new.tenant_id,
                new.inbox_id,
                new.visitor_id,
                new.priority,
                new.subject,
            )
            assert row is not None
            event = new_event(
                ConversationCreated(
                    inbox_id=new.inbox_id,
                    visitor_id=new.visitor_id,
                    priority=new.priority,  # type: ignore[arg-type]
                    subject=new.subject,
                ),
                tenant_id=str(new.tenant_id),
                conversation_id=str(conversation_id),
                producer=PRODUCER,
                occurred_at=row["created_at"],
            )
            await Outbox.add(conn, [event])
        return Conversation(**dict(row))

    async def get(self, tenant_id: uuid.UUID, conversation_id: uuid.UUID) -> Conversation | None:
        """The conversation, if it exists in this tenant."""
        row = await self._pool.fetchrow(
            "SELECT * FROM conversations WHERE id = $1 AND tenant_id = $2",
            conversation_id,
            tenant_id,
        )
        return Conversation(**dict(row)) if row else None
