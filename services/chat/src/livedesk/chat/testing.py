"""Test harness for chat: a seeded tenant and ways to act as each kind of caller.

Used by chat's own tests and the integration tests; holds no test framework code.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.models import Conversation, Inbox, Tenant, User
from livedesk.chat.passwords import hash_password
from livedesk.chat.settings import ChatSettings
from livedesk.chat.sockets import SocketRegistry
from livedesk.platform.auth import Role, TokenIssuer

__all__ = ["PASSWORD", "Chat", "Org", "make_org", "visitor_says"]

Client = TestClient[web.Request, web.Application]
PASSWORD = "correct horse battery"


@dataclass
class Org:
    """A seeded tenant: an admin, two agents (one in a team) and an inbox."""

    tenant: Tenant
    admin: User
    agent: User
    other_agent: User
    inbox: Inbox


@dataclass
class Chat:
    """The app under test and ways to act as each kind of caller."""

    client: Client
    pool: asyncpg.Pool
    directory: Directory
    store: ConversationStore
    issuer: TokenIssuer
    settings: ChatSettings
    org: Org
    stranger: Org
    registry: SocketRegistry
    sockets: list[Any] = field(default_factory=list)

    def token(self, user: User | None = None, *, role: Role | None = None, **kw: Any) -> str:
        """An access token for ``user`` (the org's admin by default)."""
        user = user or self.org.admin
        return self.issuer.issue(
            subject=str(user.id),
            tenant_id=str(user.tenant_id),
            role=role or user.role,
            token_type=kw.pop("token_type", "access"),
            ttl=kw.pop("ttl", dt.timedelta(minutes=5)),
            **kw,
        )

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        """The Authorization header for ``token``."""
        return {"Authorization": f"Bearer {token}"}

    async def visitor(
        self, inbox: Inbox | None = None, headers: dict[str, str] | None = None, **body: Any
    ) -> dict[str, Any]:
        """A new widget session (visitor, tokens) through the API."""
        inbox = inbox or self.org.inbox
        resp = await self.client.post(
            "/api/v1/widget/sessions",
            json={"widget_key": inbox.widget_key, **body},
            headers=headers,
        )
        assert resp.status == 201, await resp.text()
        session: dict[str, Any] = await resp.json()
        return session

    async def conversation(self, visitor_token: str, subject: str = "") -> dict[str, Any]:
        """A conversation opened by the visitor."""
        resp = await self.client.post(
            "/api/v1/conversations", json={"subject": subject}, headers=self.auth(visitor_token)
        )
        assert resp.status == 201, await resp.text()
        conversation: dict[str, Any] = await resp.json()
        return conversation

    async def ws(self, token: str, **kw: Any) -> Any:
        """An open WebSocket for the caller of ``token`` (after its hello frame)."""
        resp = await self.client.post("/api/v1/ws/tickets", headers=self.auth(token))
        assert resp.status == 201, await resp.text()
        ticket = (await resp.json())["ticket"]
        ws = await self.client.ws_connect(f"/ws?ticket={ticket}", **kw)
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello"
        self.sockets.append(ws)
        return ws


_password_hash: list[str] = []


async def make_org(directory: Directory, slug: str) -> Org:
    """A tenant with an admin, two agents (the first in team Support) and an inbox."""
    if not _password_hash:
        _password_hash.append(await hash_password(PASSWORD))
    hashed = _password_hash[0]
    tenant = await directory.create_tenant(slug, slug.title())
    admin = await directory.create_user(
        tenant.id,
        email=f"admin@{slug}.test",
        display_name="Ada",
        role="admin",
        password=PASSWORD,
        password_hash=hashed,
    )
    agent = await directory.create_user(
        tenant.id,
        email=f"agent@{slug}.test",
        display_name="Al",
        role="agent",
        password=PASSWORD,
        password_hash=hashed,
    )
    other = await directory.create_user(
        tenant.id,
        email=f"bo@{slug}.test",
        display_name="Bo",
        role="agent",
        password=PASSWORD,
        password_hash=hashed,
    )
    team = await directory.create_team(tenant.id, "Support")
    await directory.set_team_members(tenant.id, team.id, [agent.id])
    inbox = await directory.create_inbox(
        tenant.id, name="Website", allowed_origins=["https://shop.example"], team_id=team.id
    )
    return Org(tenant, admin, agent, other, inbox)


async def visitor_says(
    store: ConversationStore, conversation: Conversation, *bodies: str, retry_safe: bool = True
) -> list[int]:
    """The conversation's visitor sends ``bodies`` through the store; their seqs.

    ``retry_safe``: each body doubles as its ``client_msg_id`` (bodies must differ).
    """
    seqs = []
    for body in bodies:
        appended = await store.append(
            tenant_id=conversation.tenant_id,
            conversation_id=conversation.id,
            sender_kind="visitor",
            sender_id=conversation.visitor_id,
            guard="visitor",
            body=body,
            client_msg_id=body if retry_safe else None,
        )
        assert appended is not None, "the visitor may not write here"
        seqs.append(appended[0].seq)
    return seqs
