"""PostgreSQL plumbing: pools, creating a dev database, versioned migrations."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from livedesk.platform.errors import DependencyError
from livedesk.platform.logging import get_logger

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "PLATFORM_MIGRATIONS",
    "Connection",
    "create_pool",
    "ensure_database",
    "migrate",
    "open_database",
]

Connection = asyncpg.Connection | PoolConnectionProxy
"""A connection, whether opened directly or borrowed from a pool."""

log = get_logger("livedesk.postgres")

PLATFORM_MIGRATIONS = "livedesk.platform.migrations"
"""The bus tables (outbox, processed_events); apply before a service's own."""

# One lock id for every migrating process, so replicas starting together migrate once.
_MIGRATION_LOCK = 0x4C4445534B4D47  # "LDESKMG"


async def _no_reset(_: asyncpg.Connection) -> None:
    """Skip the per-release session reset query.

    asyncpg's default sends RESET ALL / UNLISTEN / CLOSE ALL on every release: a
    whole extra round trip per query on hot paths. LiveDesk never leaves session
    state on pooled connections (no SET, LISTEN or temp tables; advisory locks
    are released explicitly; LISTEN lives on dedicated connections), so there
    is nothing to reset.
    """


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A connection pool; DependencyError when the server does not answer."""
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, timeout=10, reset=_no_reset
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DependencyError(f"PostgreSQL unreachable: {exc!r}") from exc
    assert pool is not None
    return pool


async def ensure_database(dsn: str) -> None:
    """Create the database named in ``dsn`` if it does not exist (development convenience)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        return
    admin_dsn = urlunsplit(parts._replace(path="/postgres"))
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DependencyError(f"PostgreSQL unreachable: {exc!r}") from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
                log.info("database_created", database=name)
            except asyncpg.DuplicateDatabaseError:
                pass  # another process created it first
    finally:
        await conn.close()


def _migration_files(package: str) -> list[Traversable]:
    folder = resources.files(package)
    return sorted(
        (f for f in folder.iterdir() if f.name.endswith(".sql") and f.name[:4].isdigit()),
        key=lambda f: f.name,
    )


async def migrate(pool: asyncpg.Pool, package: str) -> list[str]:
    """Apply the numbered ``NNNN_name.sql`` files of ``package`` not applied yet.

    Each file runs in its own transaction, under an advisory lock so that
    concurrent starts apply it once; an applied file whose content changed is
    an error (migrations are append-only). Returns the names applied now.
    """
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       name text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                r["name"]: r["checksum"]
                for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
            }
            for file in _migration_files(package):
                sql = file.read_text(encoding="utf-8")
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                key = f"{package}:{file.name}"
                if key in done:
                    if done[key] != checksum:
                        raise RuntimeError(f"applied migration {key} was edited")
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                        key,
                        checksum,
                    )
                applied_now.append(key)
                log.info("migration_applied", migration=key)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def open_database(
    dsn: str,
    migrations: Sequence[str],
    *,
    auto_create: bool = False,
    max_size: int = 10,
) -> asyncpg.Pool:
    """A pool on ``dsn`` with the ``migrations`` packages applied, in order.

    With ``auto_create`` the database is created first if missing (development).
    """
    if auto_create:
        await ensure_database(dsn)
    pool = await create_pool(dsn, max_size=max_size)
    try:
        for package in migrations:
            await migrate(pool, package)
    except BaseException:
        await pool.close()
        raise
    return pool
