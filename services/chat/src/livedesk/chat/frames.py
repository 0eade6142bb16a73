"""Server-to-client frames (see docs/protocol.md), serialized once and fanned out as text."""

from __future__ import annotations

from typing import Any

import orjson

from livedesk.chat.models import Conversation, Message

__all__ = [
    "conversation_json",
    "conversation_notice",
    "dumps",
    "error_frame",
    "message_frame",
    "message_json",
]


def dumps(frame: dict[str, Any]) -> str:
    """One frame as JSON text."""
    return orjson.dumps(frame).decode()


def message_json(message: Message) -> dict[str, Any]:
    """A message as the API and the protocol show it."""
    return {
        "id": str(message.id),
        "conversation_id": str(message.conversation_id),
        "seq": message.seq,
        "sender_kind": message.sender_kind,
        "sender_id": str(message.sender_id) if message.sender_id else None,
        "body": message.body,
        "client_msg_id": message.client_msg_id,
        "created_at": message.created_at.isoformat(),
    }


_PRIORITIES = {1: "low", 2: "normal", 3: "high", 4: "urgent"}
PRIORITY_VALUES = {v: k for k, v in _PRIORITIES.items()}


def conversation_json(c: Conversation) -> dict[str, Any]:
    """A conversation as the API and the protocol show it."""
    return {
        "id": str(c.id),
        "tenant_id": str(c.tenant_id),
        "inbox_id": str(c.inbox_id),
        "visitor_id": str(c.visitor_id),
        "status": c.status,
        "priority": _PRIORITIES.get(c.priority, "normal"),
        "subject": c.subject,
        "team_id": str(c.team_id) if c.team_id else None,
        "agent_id": str(c.agent_id) if c.agent_id else None,
        "queue_position": c.queue_position,
        "last_seq": c.last_seq,
        "created_at": c.created_at.isoformat(),
        "updated_at": c.updated_at.isoformat(),
        "resolved_at": c.resolved_at.isoformat() if c.resolved_at else None,
        "archived_at": c.archived_at.isoformat() if c.archived_at else None,
    }


def message_frame(message: Message) -> str:
    """``message``: a new message in a subscribed conversation."""
    return dumps({"type": "message", "message": message_json(message)})


def conversation_notice(event: str, conversation: Conversation, **extra: Any) -> str:
    """``conversation``: a lifecycle change (created, queued, assigned, resolved, ...)."""
    return dumps(
        {"type": "conversation", "event": event, "conversation": conversation_json(conversation)}
        | extra
    )


def error_frame(code: str, message: str, ref: str | None = None) -> str:
    """``error``: what went wrong with a client frame (``ref`` echoes the frame's id)."""
    return dumps({"type": "error", "code": code, "message": message, "ref": ref})
