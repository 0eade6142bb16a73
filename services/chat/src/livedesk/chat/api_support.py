"""Plumbing shared by chat's REST handlers: typed app state, bodies, domain errors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError

from livedesk.chat.assignment_link import AssignmentLink
from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.errors import ChatError, Invalid, from_database
from livedesk.chat.settings import ChatSettings
from livedesk.platform.auth import TokenIssuer
from livedesk.platform.http import error_response

__all__ = [
    "CHAT_KEY",
    "ChatContext",
    "chat_errors",
    "parse_body",
    "path_uuid",
    "query_int",
    "validation_message",
]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ChatContext:
    """What chat's handlers need, built once per process."""

    settings: ChatSettings
    directory: Directory
    conversations: ConversationStore
    issuer: TokenIssuer
    assignment: AssignmentLink


CHAT_KEY = web.AppKey("chat", ChatContext)


def validation_message(exc: ValidationError) -> str:
    """A one-line summary of what was wrong, field by field."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The JSON body validated as ``model`` (415, 400 or 422 otherwise)."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="body must be application/json")
    try:
        raw = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="body is not valid JSON") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise Invalid(validation_message(exc)) from None


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    """A UUID path parameter; 404 when it is not one (no such thing can exist)."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise web.HTTPNotFound(reason=f"no such {name.removesuffix('_id')}") from None


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high] (422 otherwise)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise Invalid(f"{name} must be between {low} and {high}")
    return value


@web.middleware
async def chat_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Domain errors leave as the API's JSON error with their status."""
    try:
        return await handler(request)
    except ChatError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except asyncpg.PostgresError as exc:
        error = from_database(exc)
        if error is None:
            raise
        return error_response(error.status, error.code, error.message)
