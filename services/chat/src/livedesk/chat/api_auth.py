"""Authentication endpoints: staff login, token refresh, widget sessions, socket tickets."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, EmailStr, Field

from livedesk.chat.access import Principal, authenticate
from livedesk.chat.api_support import CHAT_KEY, ChatContext, parse_body
from livedesk.chat.directory import IssuedRefresh
from livedesk.chat.errors import Forbidden
from livedesk.chat.models import User
from livedesk.platform.auth import Role

__all__ = ["add_auth_routes", "origin_allowed", "user_json"]

Short = Annotated[str, Field(min_length=1, max_length=256)]


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: Annotated[str, Field(min_length=1, max_length=64)]
    email: Annotated[str, Field(min_length=3, max_length=254)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: Annotated[str, Field(min_length=10, max_length=256)]


class WidgetSessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    widget_key: Annotated[str, Field(min_length=10, max_length=128)]
    name: Annotated[str, Field(max_length=128)] = ""
    email: EmailStr | None = None


def user_json(user: User) -> dict[str, object]:
    """The public view of a user."""
    return {
        "id": str(user.id),
        "tenant_id": str(user.tenant_id),
        "email": user.email,
        "display_name": user.display_name,
        "role": user.role,
        "active": user.active,
    }


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """A browser ``Origin`` is acceptable for an inbox (an empty list allows any).

    Only browsers send Origin, and only browsers need stopping here (another
    website embedding the widget); native apps send none and are let through.
    """
    if not allowed or origin is None:
        return True
    return origin.rstrip("/") in {a.rstrip("/") for a in allowed}


def _tokens(ctx: ChatContext, refresh: IssuedRefresh) -> dict[str, object]:
    role: Role = refresh.role  # type: ignore[assignment]
    ttl = ctx.settings.visitor_token_ttl if role == "visitor" else ctx.settings.access_token_ttl
    access = ctx.issuer.issue(
        subject=str(refresh.subject_id),
        tenant_id=str(refresh.tenant_id),
        role=role,
        token_type="access",
        ttl=dt.timedelta(seconds=ttl),
    )
    return {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl,
        "refresh_token": refresh.token,
    }


async def login(request: web.Request) -> web.Response:
    """POST /api/v1/auth/login: an agent or admin signs in."""
    ctx = request.app[CHAT_KEY]
    body = await parse_body(request, LoginBody)
    user = await ctx.directory.authenticate(body.tenant, body.email, body.password)
    if user is None:
        raise web.HTTPUnauthorized(reason="wrong tenant, email or password")
    refresh = await ctx.directory.issue_refresh(
        user.tenant_id, user.id, user.role, dt.timedelta(seconds=ctx.settings.refresh_token_ttl)
    )
    return web.json_response({**_tokens(ctx, refresh), "user": user_json(user)})


async def refresh(request: web.Request) -> web.Response:
    """POST /api/v1/auth/refresh: trade a refresh token for new tokens (single use)."""
    ctx = request.app[CHAT_KEY]
    body = await parse_body(request, RefreshBody)
    rotated = await ctx.directory.rotate_refresh(
        body.refresh_token, dt.timedelta(seconds=ctx.settings.refresh_token_ttl)
    )
    if rotated is None:
        raise web.HTTPUnauthorized(reason="refresh token invalid, expired or already used")
    return web.json_response(_tokens(ctx, rotated))


async def widget_session(request: web.Request) -> web.Response:
    """POST /api/v1/widget/sessions: a website visitor starts (anonymous) chatting."""
    ctx = request.app[CHAT_KEY]
    body = await parse_body(request, WidgetSessionBody)
    inbox = await ctx.directory.inbox_by_widget_key(body.widget_key)
    if inbox is None:
        raise web.HTTPUnauthorized(reason="unknown widget key")
    if not origin_allowed(request.headers.get("Origin"), inbox.allowed_origins):
        raise Forbidden("this website may not use this inbox")
    visitor = await ctx.directory.create_visitor(inbox, body.name, str(body.email or ""))
    refresh = await ctx.directory.issue_refresh(
        inbox.tenant_id, visitor.id, "visitor", dt.timedelta(seconds=ctx.settings.refresh_token_ttl)
    )
    return web.json_response(
        {
            **_tokens(ctx, refresh),
            "visitor": {"id": str(visitor.id), "name": visitor.name, "email": visitor.email},
            "inbox": {"id": str(inbox.id), "name": inbox.name},
        },
        status=201,
    )


async def ws_ticket(request: web.Request) -> web.Response:
    """POST /api/v1/ws/tickets: a short-lived, single-use ticket to open the WebSocket."""
    ctx = request.app[CHAT_KEY]
    principal: Principal = authenticate(request)
    ttl = ctx.settings.ws_ticket_ttl
    ticket = ctx.issuer.issue(
        subject=str(principal.subject_id),
        tenant_id=str(principal.tenant_id),
        role=principal.role,
        token_type="ws_ticket",
        ttl=dt.timedelta(seconds=ttl),
    )
    return web.json_response({"ticket": ticket, "expires_in": ttl}, status=201)


async def me(request: web.Request) -> web.Response:
    """GET /api/v1/me: the signed-in agent or admin."""
    ctx = request.app[CHAT_KEY]
    principal = authenticate(request, "agent", "admin")
    user = await ctx.directory.user(principal.tenant_id, principal.subject_id)
    teams = await ctx.directory.team_ids_of(principal.tenant_id, principal.subject_id)
    return web.json_response({**user_json(user), "team_ids": [str(t) for t in teams]})


def add_auth_routes(app: web.Application) -> None:
    """Mount the authentication endpoints."""
    app.router.add_post("/api/v1/auth/login", login)
    app.router.add_post("/api/v1/auth/refresh", refresh)
    app.router.add_post("/api/v1/widget/sessions", widget_session)
    app.router.add_post("/api/v1/ws/tickets", ws_ticket)
    app.router.add_get("/api/v1/me", me)
