"""REST API under /api/v1 (conversations for now; the chat issue grows it)."""

from __future__ import annotations

import uuid
from importlib import resources
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from livedesk.chat.store import Conversation, ConversationStore, NewConversation
from livedesk.contracts.events.v1.common_pb2 import Priority
from livedesk.platform.http import error_response

__all__ = ["STORE_KEY", "add_api_routes"]

STORE_KEY = web.AppKey("conversation_store", ConversationStore)
MAX_BODY = 64 * 1024

_PRIORITIES = {
    "low": Priority.PRIORITY_LOW,
    "normal": Priority.PRIORITY_NORMAL,
    "high": Priority.PRIORITY_HIGH,
    "urgent": Priority.PRIORITY_URGENT,
}
_PRIORITY_NAMES = {v: k for k, v in _PRIORITIES.items()}

Text = Annotated[str, Field(max_length=512)]
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


class CreateConversation(BaseModel):
    """Body of POST /api/v1/conversations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: uuid.UUID
    inbox_id: Id
    visitor_id: Annotated[str, Field(max_length=128)] = ""
    subject: Text = ""
    priority: Literal["low", "normal", "high", "urgent"] = "normal"


def _conversation_json(c: Conversation) -> dict[str, object]:
    return {
        "id": str(c.id),
        "tenant_id": str(c.tenant_id),
        "inbox_id": c.inbox_id,
        "visitor_id": c.visitor_id,
        "status": c.status,
        "priority": _PRIORITY_NAMES.get(c.priority, "normal"),  # type: ignore[call-overload]
        "subject": c.subject,
        "created_at": c.created_at.isoformat(),
    }


async def _read_json(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="body must be application/json")
    try:
        return await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="body is not valid JSON") from None


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


async def create_conversation(request: web.Request) -> web.Response:
    """POST /api/v1/conversations: open a conversation (queued for assignment)."""
    try:
        body = CreateConversation.model_validate(await _read_json(request))
    except ValidationError as exc:
        return error_response(422, "validation_error", _validation_message(exc))
    conversation = await request.app[STORE_KEY].create(
        NewConversation(
            tenant_id=body.tenant_id,
            inbox_id=body.inbox_id,
            visitor_id=body.visitor_id,
            subject=body.subject,
            priority=_PRIORITIES[body.priority],
        )
    )
    return web.json_response(_conversation_json(conversation), status=201)


async def get_conversation(request: web.Request) -> web.Response:
    """GET /api/v1/conversations/{id}?tenant_id=..."""
    try:
        conversation_id = uuid.UUID(request.match_info["conversation_id"])
        tenant_id = uuid.UUID(request.query.get("tenant_id", ""))
    except ValueError:
        return error_response(422, "validation_error", "conversation id and tenant_id are UUIDs")
    conversation = await request.app[STORE_KEY].get(tenant_id, conversation_id)
    if conversation is None:
        return error_response(404, "not_found", "no such conversation")
    return web.json_response(_conversation_json(conversation))


OPENAPI_TEXT = resources.files("livedesk.chat").joinpath("openapi.yaml").read_text("utf-8")


async def get_openapi(_: web.Request) -> web.Response:
    """GET /api/v1/openapi.yaml: the document describing this API."""
    return web.Response(text=OPENAPI_TEXT, content_type="application/yaml")


def add_api_routes(app: web.Application, store: ConversationStore) -> None:
    """Mount the REST API on ``app``."""
    app[STORE_KEY] = store
    app.router.add_get("/api/v1/openapi.yaml", get_openapi)
    app.router.add_post("/api/v1/conversations", create_conversation)
    app.router.add_get("/api/v1/conversations/{conversation_id}", get_conversation)
