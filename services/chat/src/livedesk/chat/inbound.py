"""Routing decisions from the assignment service, applied to conversations and pushed to sockets.

Consumes conversation.assigned, conversation.queued and conversation.transferred.
Applying is idempotent (same state twice is the same state) and ordered by the
event's occurred_at, so a redelivered or late event never moves a
conversation back.
"""

from __future__ import annotations

import datetime as dt
import uuid

from livedesk.chat.actions import ChatActions
from livedesk.contracts.events.v1.conversation_pb2 import (
    ConversationAssigned,
    ConversationQueued,
    ConversationTransferred,
)
from livedesk.platform.bus import DUPLICATE, Envelope, payload_of
from livedesk.platform.logging import get_logger

__all__ = ["INBOUND_EVENT_TYPES", "RoutingEvents"]

log = get_logger("livedesk.chat.inbound")

INBOUND_EVENT_TYPES = (
    "conversation.assigned",
    "conversation.queued",
    "conversation.transferred",
)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


class RoutingEvents:
    """The bus handler for routing events."""

    def __init__(self, actions: ChatActions) -> None:
        self._actions = actions

    async def handle(self, env: Envelope) -> object:
        """Apply one event; DUPLICATE when it changed nothing (stale, resolved, unknown)."""
        conversation_id = _uuid(env.conversation_id)
        if conversation_id is None:
            log.warning("routing_event_without_conversation", event_id=env.event_id)
            return DUPLICATE
        occurred = env.occurred_at.ToDatetime(tzinfo=dt.UTC)
        payload = payload_of(env)
        store = self._actions.conversations
        if isinstance(payload, ConversationAssigned):
            agent_id = _uuid(payload.agent_id)
            if agent_id is None:
                raise ValueError(f"conversation.assigned without a valid agent_id: {env.event_id}")
            changed = await store.apply_assigned(
                conversation_id, agent_id, _uuid(payload.team_id), occurred
            )
            if changed is None:
                return DUPLICATE
            previous = _uuid(payload.previous_agent_id)
            await self._actions.announce(
                "assigned",
                changed,
                also_agents=[previous] if previous else [],
                assigned_by=int(payload.assigned_by),
            )
        elif isinstance(payload, ConversationQueued):
            changed = await store.apply_queued(
                conversation_id, payload.position, _uuid(payload.team_id), occurred
            )
            if changed is None:
                return DUPLICATE
            previous = _uuid(payload.previous_agent_id)
            await self._actions.announce(
                "queued",
                changed,
                also_agents=[previous] if previous else [],
                position=payload.position,
            )
        elif isinstance(payload, ConversationTransferred):
            # The follow-up conversation.assigned / .queued carries the new state;
            # here the participants only learn that a transfer is under way.
            tenant = _uuid(env.tenant_id)
            if tenant is None:
                return DUPLICATE
            conversation = await store.get(tenant, conversation_id)
            source = _uuid(payload.from_agent_id)
            await self._actions.announce(
                "transferred",
                conversation,
                also_agents=[source] if source else [],
                from_agent_id=payload.from_agent_id or None,
                to_agent_id=payload.to_agent_id or None,
                to_team_id=payload.to_team_id or None,
            )
        return None
