"""Tenants and their people: inboxes, agents and admins, teams, visitors, refresh tokens.

Every method takes the tenant it works in; nothing here crosses tenants.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Sequence

import asyncpg

from livedesk.chat.errors import Conflict, NotFound
from livedesk.chat.models import Inbox, Team, Tenant, User, Visitor, record
from livedesk.chat.passwords import hash_password, verify_password
from livedesk.platform.ids import uuid7

__all__ = ["Directory", "IssuedRefresh"]


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class IssuedRefresh:
    """A new refresh token (shown once) and what it stands for."""

    def __init__(self, token: str, tenant_id: uuid.UUID, subject_id: uuid.UUID, role: str) -> None:
        self.token = token
        self.tenant_id = tenant_id
        self.subject_id = subject_id
        self.role = role


class Directory:
    """Tenants, inboxes, users, teams and visitors in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # --- tenants -------------------------------------------------------------

    async def create_tenant(self, slug: str, name: str, time_zone: str = "UTC") -> Tenant:
        """A new tenant; Conflict when the slug is taken."""
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO tenants (id, slug, name, time_zone) VALUES ($1, $2, $3, $4) "
                "RETURNING *",
                uuid7(),
                slug,
                name,
                time_zone,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"tenant {slug!r} exists") from None
        return record(Tenant, row)  # type: ignore[no-any-return]

    async def tenant_by_slug(self, slug: str) -> Tenant | None:
        """The tenant called ``slug``."""
        row = await self._pool.fetchrow("SELECT * FROM tenants WHERE slug = $1", slug)
        return record(Tenant, row) if row else None

    # --- users ---------------------------------------------------------------

    async def create_user(
        self,
        tenant_id: uuid.UUID,
        *,
        email: str,
        display_name: str,
        role: str,
        password: str,
        password_hash: str | None = None,
    ) -> User:
        """A new agent or admin; Conflict when the email is taken in the tenant.

        ``password_hash`` (of ``password``) skips the deliberately slow hashing,
        for seeding many users with one known password.
        """
        password_hash = password_hash or await hash_password(password)
        try:
            row = await self._pool.fetchrow(
                """INSERT INTO users (id, tenant_id, email, display_name, role, password_hash)
                   VALUES ($1, $2, lower($3), $4, $5, $6) RETURNING *""",
                uuid7(),
                tenant_id,
                email,
                display_name,
                role,
                password_hash,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"{email} already has an account") from None
        return record(User, row)  # type: ignore[no-any-return]

    async def authenticate(self, tenant_slug: str, email: str, password: str) -> User | None:
        """The active user with these credentials, else None (same timing either way)."""
        row = await self._pool.fetchrow(
            """SELECT u.* FROM users u JOIN tenants t ON t.id = u.tenant_id
               WHERE t.slug = $1 AND u.email = lower($2) AND u.active""",
            tenant_slug,
            email,
        )
        ok = await verify_password(row["password_hash"] if row else None, password)
        return record(User, row) if row and ok else None

    async def user(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> User:
        """The user; NotFound outside the tenant."""
        row = await self._pool.fetchrow(
            "SELECT * FROM users WHERE id = $1 AND tenant_id = $2", user_id, tenant_id
        )
        if row is None:
            raise NotFound("no such user")
        return record(User, row)  # type: ignore[no-any-return]

    async def users(self, tenant_id: uuid.UUID) -> list[User]:
        """Every user of the tenant, by name."""
        rows = await self._pool.fetch(
            "SELECT * FROM users WHERE tenant_id = $1 ORDER BY display_name, id", tenant_id
        )
        return [record(User, r) for r in rows]

    async def update_user(
        self,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        display_name: str | None = None,
        role: str | None = None,
        active: bool | None = None,
        password: str | None = None,
    ) -> User:
        """Change what is given; NotFound outside the tenant."""
        password_hash = await hash_password(password) if password is not None else None
        row = await self._pool.fetchrow(
            """UPDATE users SET display_name = coalesce($3, display_name),
                                role = coalesce($4, role),
                                active = coalesce($5, active),
                                password_hash = coalesce($6, password_hash)
               WHERE id = $1 AND tenant_id = $2 RETURNING *""",
            user_id,
            tenant_id,
            display_name,
            role,
            active,
            password_hash,
        )
        if row is None:
            raise NotFound("no such user")
        return record(User, row)  # type: ignore[no-any-return]

    async def team_ids_of(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> list[uuid.UUID]:
        """The teams the user belongs to."""
        rows = await self._pool.fetch(
            """SELECT m.team_id FROM team_members m JOIN teams t ON t.id = m.team_id
               WHERE m.user_id = $1 AND t.tenant_id = $2""",
            user_id,
            tenant_id,
        )
        return [r["team_id"] for r in rows]

    # --- teams ---------------------------------------------------------------

    async def create_team(self, tenant_id: uuid.UUID, name: str) -> Team:
        """A new team; Conflict when the name is taken."""
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO teams (id, tenant_id, name) VALUES ($1, $2, $3) RETURNING *",
                uuid7(),
                tenant_id,
                name,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"team {name!r} exists") from None
        return record(Team, row)  # type: ignore[no-any-return]

    async def teams(self, tenant_id: uuid.UUID) -> list[tuple[Team, list[uuid.UUID]]]:
        """Every team with its members."""
        rows = await self._pool.fetch(
            """SELECT t.*, coalesce(array_agg(m.user_id) FILTER (WHERE m.user_id IS NOT NULL),
                                    '{}') AS members
               FROM teams t LEFT JOIN team_members m ON m.team_id = t.id
               WHERE t.tenant_id = $1 GROUP BY t.id ORDER BY t.name""",
            tenant_id,
        )
        return [(record(Team, r), list(r["members"])) for r in rows]

    async def set_team_members(
        self, tenant_id: uuid.UUID, team_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
    ) -> None:
        """Replace the team's members; NotFound if the team or a user is not the tenant's."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT 1 FROM teams WHERE id = $1 AND tenant_id = $2", team_id, tenant_id
            ):
                raise NotFound("no such team")
            known = await conn.fetchval(
                "SELECT count(*) FROM users WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
                tenant_id,
                list(user_ids),
            )
            if known != len(set(user_ids)):
                raise NotFound("no such user")
            await conn.execute("DELETE FROM team_members WHERE team_id = $1", team_id)
            await conn.executemany(
                "INSERT INTO team_members (team_id, user_id) VALUES ($1, $2)",
                [(team_id, u) for u in set(user_ids)],
            )

    # --- inboxes -------------------------------------------------------------

    async def create_inbox(
        self,
        tenant_id: uuid.UUID,
        *,
        name: str,
        allowed_origins: Sequence[str] = (),
        team_id: uuid.UUID | None = None,
        required_skills: Sequence[str] = (),
    ) -> Inbox:
        """A new inbox with a fresh public widget key."""
        if team_id is not None and not await self._pool.fetchval(
            "SELECT 1 FROM teams WHERE id = $1 AND tenant_id = $2", team_id, tenant_id
        ):
            raise NotFound("no such team")
        row = await self._pool.fetchrow(
            """INSERT INTO inboxes (id, tenant_id, name, widget_key, allowed_origins, team_id,
                                    required_skills)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
            uuid7(),
            tenant_id,
            name,
            "wk_" + secrets.token_urlsafe(24),
            list(allowed_origins),
            team_id,
            list(required_skills),
        )
        return record(Inbox, row)  # type: ignore[no-any-return]

    async def inboxes(self, tenant_id: uuid.UUID) -> list[Inbox]:
        """Every inbox of the tenant."""
        rows = await self._pool.fetch(
            "SELECT * FROM inboxes WHERE tenant_id = $1 ORDER BY name, id", tenant_id
        )
        return [record(Inbox, r) for r in rows]

    async def inbox(self, tenant_id: uuid.UUID, inbox_id: uuid.UUID) -> Inbox:
        """The inbox; NotFound outside the tenant."""
        row = await self._pool.fetchrow(
            "SELECT * FROM inboxes WHERE id = $1 AND tenant_id = $2", inbox_id, tenant_id
        )
        if row is None:
            raise NotFound("no such inbox")
        return record(Inbox, row)  # type: ignore[no-any-return]

    async def inbox_by_widget_key(self, widget_key: str) -> Inbox | None:
        """The inbox a widget key opens."""
        row = await self._pool.fetchrow("SELECT * FROM inboxes WHERE widget_key = $1", widget_key)
        return record(Inbox, row) if row else None

    async def update_inbox(
        self,
        tenant_id: uuid.UUID,
        inbox_id: uuid.UUID,
        *,
        name: str | None = None,
        allowed_origins: Sequence[str] | None = None,
        required_skills: Sequence[str] | None = None,
    ) -> Inbox:
        """Change what is given."""
        row = await self._pool.fetchrow(
            """UPDATE inboxes SET name = coalesce($3, name),
                                  allowed_origins = coalesce($4, allowed_origins),
                                  required_skills = coalesce($5, required_skills)
               WHERE id = $1 AND tenant_id = $2 RETURNING *""",
            inbox_id,
            tenant_id,
            name,
            list(allowed_origins) if allowed_origins is not None else None,
            list(required_skills) if required_skills is not None else None,
        )
        if row is None:
            raise NotFound("no such inbox")
        return record(Inbox, row)  # type: ignore[no-any-return]

    # --- visitors ------------------------------------------------------------

    async def create_visitor(self, inbox: Inbox, name: str = "", email: str = "") -> Visitor:
        """A new anonymous (or named) visitor of ``inbox``."""
        row = await self._pool.fetchrow(
            """INSERT INTO visitors (id, tenant_id, inbox_id, name, email)
               VALUES ($1, $2, $3, $4, $5) RETURNING *""",
            uuid7(),
            inbox.tenant_id,
            inbox.id,
            name,
            email,
        )
        return record(Visitor, row)  # type: ignore[no-any-return]

    async def visitor(self, tenant_id: uuid.UUID, visitor_id: uuid.UUID) -> Visitor:
        """The visitor; NotFound outside the tenant."""
        row = await self._pool.fetchrow(
            "SELECT * FROM visitors WHERE id = $1 AND tenant_id = $2", visitor_id, tenant_id
        )
        if row is None:
            raise NotFound("no such visitor")
        return record(Visitor, row)  # type: ignore[no-any-return]

    # --- refresh tokens ------------------------------------------------------

    async def issue_refresh(
        self,
        tenant_id: uuid.UUID,
        subject_id: uuid.UUID,
        role: str,
        ttl: dt.timedelta,
        family_id: uuid.UUID | None = None,
    ) -> IssuedRefresh:
        """A new opaque refresh token; only its hash is stored."""
        token = "rt_" + secrets.token_urlsafe(32)
        await self._pool.execute(
            """INSERT INTO refresh_tokens (token_hash, tenant_id, subject_id, role, family_id,
                                           expires_at)
               VALUES ($1, $2, $3, $4, $5, now() + $6::interval)""",
            _token_hash(token),
            tenant_id,
            subject_id,
            role,
            family_id or uuid7(),
            ttl,
        )
        return IssuedRefresh(token, tenant_id, subject_id, role)

    async def rotate_refresh(self, token: str, ttl: dt.timedelta) -> IssuedRefresh | None:
        """Trade a refresh token for a new one (single use).

        A token presented twice means it leaked: its whole family is revoked and
        None is returned, so the thief and the owner both have to log in again.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
                _token_hash(token),
            )
            if row is None or row["expires_at"] < dt.datetime.now(dt.UTC):
                return None
            if row["used_at"] is not None:
                await conn.execute(
                    "UPDATE refresh_tokens SET expires_at = now() WHERE family_id = $1",
                    row["family_id"],
                )
                return None
            if row["role"] in ("agent", "admin") and not await conn.fetchval(
                "SELECT active FROM users WHERE id = $1", row["subject_id"]
            ):
                return None
            await conn.execute(
                "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1", row["token_hash"]
            )
        return await self.issue_refresh(
            row["tenant_id"], row["subject_id"], row["role"], ttl, row["family_id"]
        )
