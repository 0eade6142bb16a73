"""Who may see and do what: the one place chat's authorization rules live."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from livedesk.chat.errors import Forbidden, NotFound
from livedesk.chat.models import Conversation
from livedesk.platform.auth import Claims, Role
from livedesk.platform.auth.http import require_claims

__all__ = ["Principal", "authenticate", "check_post", "check_view", "require_staff"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    tenant_id: uuid.UUID
    subject_id: uuid.UUID
    role: Role

    @property
    def is_staff(self) -> bool:
        """Agents and admins."""
        return self.role in ("agent", "admin")

    @classmethod
    def from_claims(cls, claims: Claims) -> Principal:
        """The principal a verified token names; 401 when its ids are not UUIDs."""
        try:
            return cls(uuid.UUID(claims.tenant_id), uuid.UUID(claims.subject), claims.role)
        except ValueError:
            raise web.HTTPUnauthorized(reason="invalid token") from None


def authenticate(request: web.Request, *roles: Role) -> Principal:
    """The request's caller (401 without a valid access token, 403 for another role)."""
    return Principal.from_claims(require_claims(request, *roles))


def require_staff(principal: Principal) -> None:
    """Forbidden for visitors."""
    if not principal.is_staff:
        raise Forbidden("agents and admins only")


def check_view(
    principal: Principal, conversation: Conversation, team_ids: Sequence[uuid.UUID]
) -> None:
    """NotFound unless ``principal`` may see ``conversation``.

    Visitors see their own conversations; agents those assigned to them and
    the queued ones of their teams (or of no team); admins all of the tenant's.
    NotFound rather than Forbidden, so ids of others' conversations leak nothing.
    """
    if conversation.tenant_id != principal.tenant_id:
        raise NotFound("no such conversation")
    if principal.role == "admin":
        return
    if principal.role == "visitor":
        if conversation.visitor_id != principal.subject_id:
            raise NotFound("no such conversation")
        return
    if conversation.agent_id == principal.subject_id:
        return
    if conversation.status == "queued" and (
        conversation.team_id is None or conversation.team_id in team_ids
    ):
        return
    raise NotFound("no such conversation")


def check_post(principal: Principal, conversation: Conversation) -> None:
    """Forbidden unless ``principal`` may write into ``conversation`` (already viewable)."""
    if principal.role in ("visitor", "admin"):
        return
    if conversation.agent_id != principal.subject_id:
        raise Forbidden("only the assigned agent (or an admin) writes in this conversation")
