"""Client-to-server frames of the WebSocket protocol (docs/protocol.md), validated."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = ["CLIENT_FRAME", "ClientFrame"]

Ref = Annotated[str, Field(max_length=64)]
ClientMsgId = Annotated[str, Field(min_length=1, max_length=64)]
Seq = Annotated[int, Field(ge=0, le=2**53)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Ref | None = None


class Subscribe(_Frame):
    type: Literal["subscribe"]
    conversation_id: uuid.UUID
    after_seq: Seq = 0


class Unsubscribe(_Frame):
    type: Literal["unsubscribe"]
    conversation_id: uuid.UUID


class Fetch(_Frame):
    type: Literal["fetch"]
    conversation_id: uuid.UUID
    after_seq: Seq
    limit: Annotated[int, Field(ge=1, le=500)] = 100


class Send(_Frame):
    type: Literal["send"]
    conversation_id: uuid.UUID
    client_msg_id: ClientMsgId
    body: Annotated[str, Field(min_length=1, max_length=32000)]


class Typing(_Frame):
    type: Literal["typing"]
    conversation_id: uuid.UUID
    state: bool


class Read(_Frame):
    type: Literal["read"]
    conversation_id: uuid.UUID
    seq: Seq


class Ping(_Frame):
    type: Literal["ping"]


class Presence(_Frame):
    type: Literal["presence"]
    status: Literal["online", "away"]


ClientFrame = Annotated[
    Subscribe | Unsubscribe | Fetch | Send | Typing | Read | Ping | Presence,
    Field(discriminator="type"),
]
CLIENT_FRAME: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
