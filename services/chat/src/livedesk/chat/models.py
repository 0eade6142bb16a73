"""Chat's records, as read from PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Conversation",
    "Inbox",
    "Message",
    "SenderKind",
    "Status",
    "Team",
    "Tenant",
    "User",
    "Visitor",
    "record",
]

SenderKind = Literal["visitor", "agent", "system"]
Status = Literal["queued", "assigned", "resolved"]


def record(cls: type[Any], row: Any) -> Any:
    """``cls`` built from the row's columns that it has fields for."""
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in dict(row).items() if k in names})


@dataclass(frozen=True, slots=True)
class Tenant:
    id: uuid.UUID
    slug: str
    name: str
    time_zone: str


@dataclass(frozen=True, slots=True)
class Team:
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str


@dataclass(frozen=True, slots=True)
class Inbox:
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    widget_key: str
    allowed_origins: list[str]
    team_id: uuid.UUID | None
    required_skills: list[str]


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    tenant_id: uuid.UUID
    email: str
    display_name: str
    role: Literal["agent", "admin"]
    active: bool


@dataclass(frozen=True, slots=True)
class Visitor:
    id: uuid.UUID
    tenant_id: uuid.UUID
    inbox_id: uuid.UUID
    name: str
    email: str


@dataclass(frozen=True, slots=True)
class Conversation:
    id: uuid.UUID
    tenant_id: uuid.UUID
    inbox_id: uuid.UUID
    visitor_id: uuid.UUID
    status: Status
    priority: int
    subject: str
    team_id: uuid.UUID | None
    agent_id: uuid.UUID | None
    queue_position: int | None
    last_seq: int
    created_at: dt.datetime
    updated_at: dt.datetime
    resolved_at: dt.datetime | None
    # Cold data: set once the messages moved to the archive (livedesk.chat.archive).
    archived_at: dt.datetime | None = None
    archive_key: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    conversation_id: uuid.UUID
    seq: int
    id: uuid.UUID
    tenant_id: uuid.UUID
    sender_kind: SenderKind
    sender_id: uuid.UUID | None
    body: str
    client_msg_id: str | None
    created_at: dt.datetime
