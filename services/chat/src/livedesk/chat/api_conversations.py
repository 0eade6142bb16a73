"""Conversation endpoints: open, list, read history, send, lifecycle, read marks, CSAT."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from livedesk.chat.access import authenticate, check_post
from livedesk.chat.actions import ChatActions
from livedesk.chat.api_support import CHAT_KEY, parse_body, path_uuid, query_int
from livedesk.chat.errors import Forbidden, Invalid
from livedesk.chat.frames import PRIORITY_VALUES, conversation_json, message_json

__all__ = ["ACTIONS_KEY", "add_conversation_routes"]

ACTIONS_KEY = web.AppKey("actions", ChatActions)


class OpenConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: Annotated[str, Field(max_length=512)] = ""
    priority: Literal["low", "normal", "high", "urgent"] = "normal"


class SendMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: Annotated[str, Field(min_length=1, max_length=32000)]
    client_msg_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class MarkRead(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: Annotated[int, Field(ge=0, le=2**53)]


class Transfer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    reason: Annotated[str, Field(max_length=500)] = ""


class Rate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: Annotated[int, Field(ge=1, le=5)]
    comment: Annotated[str, Field(max_length=2000)] = ""


async def open_conversation(request: web.Request) -> web.Response:
    """POST /api/v1/conversations (visitor)."""
    principal = authenticate(request, "visitor")
    body = await parse_body(request, OpenConversation)
    conversation = await request.app[ACTIONS_KEY].open(
        principal, body.subject, PRIORITY_VALUES[body.priority]
    )
    return web.json_response(conversation_json(conversation), status=201)


async def list_conversations(request: web.Request) -> web.Response:
    """GET /api/v1/conversations: the caller's view, newest first, paginated."""
    principal = authenticate(request)
    actions = request.app[ACTIONS_KEY]
    status = request.query.get("status")
    if status not in (None, "queued", "assigned", "resolved"):
        raise Invalid("status must be queued, assigned or resolved")
    cursor = request.query.get("cursor")
    try:
        before = uuid.UUID(cursor) if cursor else None
    except ValueError:
        raise Invalid("cursor is not one this API returned") from None
    limit = query_int(request, "limit", 50, 1, 200)
    mine = request.query.get("mine") == "true"
    store = actions.conversations
    if principal.role == "visitor":
        page = await store.page(
            principal.tenant_id,
            visitor_id=principal.subject_id,
            status=status,
            before=before,
            limit=limit,
        )
    elif principal.role == "admin" and not mine:
        page = await store.page(principal.tenant_id, status=status, before=before, limit=limit)
    elif mine:
        page = await store.page(
            principal.tenant_id,
            agent_id=principal.subject_id,
            status=status,
            before=before,
            limit=limit,
        )
    else:
        page = await store.page(
            principal.tenant_id,
            visible_to_agent=(principal.subject_id, await actions.team_ids(principal)),
            status=status,
            before=before,
            limit=limit,
        )
    return web.json_response(
        {"items": [conversation_json(c) for c in page.items], "next_cursor": page.next_cursor}
    )


async def get_conversation(request: web.Request) -> web.Response:
    """GET /api/v1/conversations/{conversation_id}."""
    principal = authenticate(request)
    conversation = await request.app[ACTIONS_KEY].visible(
        principal, path_uuid(request, "conversation_id"), replica_ok=True
    )
    return web.json_response(conversation_json(conversation))


async def list_messages(request: web.Request) -> web.Response:
    """GET /api/v1/conversations/{conversation_id}/messages: history by seq.

    ``after_seq`` pages forward (oldest first); ``before_seq`` pages back; with
    neither, the latest ``limit`` messages.
    """
    principal = authenticate(request)
    actions = request.app[ACTIONS_KEY]
    conversation = await actions.visible(
        principal, path_uuid(request, "conversation_id"), replica_ok=True
    )
    limit = query_int(request, "limit", 50, 1, 500)
    if "after_seq" in request.query and "before_seq" in request.query:
        raise Invalid("give after_seq or before_seq, not both")
    if "after_seq" in request.query:
        after = query_int(request, "after_seq", 0, 0, 2**53)
        messages = await actions.history_after(
            conversation, after, limit + 1, known_seq=conversation.last_seq
        )
        more = len(messages) > limit
        messages = messages[:limit]
    else:
        before = query_int(request, "before_seq", conversation.last_seq + 1, 1, 2**53)
        messages = await actions.history_before(conversation, before, limit + 1)
        more = len(messages) > limit
        messages = messages[-limit:]
    return web.json_response(
        {
            "items": [message_json(m) for m in messages],
            "last_seq": conversation.last_seq,
            "more": more,
        }
    )


async def send_message(request: web.Request) -> web.Response:
    """POST /api/v1/conversations/{conversation_id}/messages: 201, or 200 for a retry."""
    principal = authenticate(request)
    body = await parse_body(request, SendMessage)
    message, created = await request.app[ACTIONS_KEY].send(
        principal, path_uuid(request, "conversation_id"), body.body, body.client_msg_id
    )
    return web.json_response(message_json(message), status=201 if created else 200)


async def resolve(request: web.Request) -> web.Response:
    """POST /api/v1/conversations/{conversation_id}/resolve."""
    principal = authenticate(request)
    conversation = await request.app[ACTIONS_KEY].resolve(
        principal, path_uuid(request, "conversation_id")
    )
    return web.json_response(conversation_json(conversation))


async def reopen(request: web.Request) -> web.Response:
    """POST /api/v1/conversations/{conversation_id}/reopen."""
    principal = authenticate(request)
    conversation = await request.app[ACTIONS_KEY].reopen(
        principal, path_uuid(request, "conversation_id")
    )
    return web.json_response(conversation_json(conversation))


async def mark_read(request: web.Request) -> web.Response:
    """POST /api/v1/conversations/{conversation_id}/read."""
    principal = authenticate(request)
    body = await parse_body(request, MarkRead)
    seq = await request.app[ACTIONS_KEY].mark_read(
        principal, path_uuid(request, "conversation_id"), body.seq
    )
    return web.json_response({"last_read_seq": seq})


async def rate(request: web.Request) -> web.Response:
    """POST /api/v1/conversations/{conversation_id}/csat (the visitor, once resolved)."""
    principal = authenticate(request, "visitor")
    body = await parse_body(request, Rate)
    actions = request.app[ACTIONS_KEY]
    conversation = await actions.visible(principal, path_uuid(request, "conversation_id"))
    check_post(principal, conversation)
    if conversation.visitor_id != principal.subject_id:
        raise Forbidden("only the visitor rates")
    await actions.conversations.submit_csat(conversation, body.rating, body.comment)
    return web.json_response({"rating": body.rating, "comment": body.comment}, status=201)


async def transfer(request: web.Request) -> web.Response:
    """POST /api/v1/conversations/{conversation_id}/transfer: to an agent or a team queue."""
    principal = authenticate(request, "agent", "admin")
    body = await parse_body(request, Transfer)
    if (body.agent_id is None) == (body.team_id is None):
        raise Invalid("give agent_id or team_id, exactly one")
    actions = request.app[ACTIONS_KEY]
    conversation = await actions.visible(principal, path_uuid(request, "conversation_id"))
    check_post(principal, conversation)
    link = request.app[CHAT_KEY].assignment
    await link.transfer(
        principal,
        str(conversation.id),
        agent_id=str(body.agent_id) if body.agent_id else None,
        team_id=str(body.team_id) if body.team_id else None,
        reason=body.reason,
    )
    # The new placement arrives as conversation.assigned / .queued over the bus.
    return web.json_response({"status": "transferring"}, status=202)


def add_conversation_routes(app: web.Application, actions: ChatActions) -> None:
    """Mount the conversation endpoints."""
    app[ACTIONS_KEY] = actions
    base = "/api/v1/conversations"
    one = base + "/{conversation_id}"
    app.router.add_post(base, open_conversation)
    app.router.add_get(base, list_conversations)
    app.router.add_get(one, get_conversation)
    app.router.add_get(one + "/messages", list_messages)
    app.router.add_post(one + "/messages", send_message)
    app.router.add_post(one + "/resolve", resolve)
    app.router.add_post(one + "/reopen", reopen)
    app.router.add_post(one + "/transfer", transfer)
    app.router.add_post(one + "/read", mark_read)
    app.router.add_post(one + "/csat", rate)
