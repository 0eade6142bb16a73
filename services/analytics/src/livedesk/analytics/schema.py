"""Versioned schema migrations for ClickHouse, recorded in ``schema_migrations``.

Migrations are the files ``migrations/NNNN_name.sql`` of this package, applied
in version order, each once. A file holds one or more statements, each ending
with ``;`` at the end of a line.

ClickHouse has no transactional DDL: a process that dies between a statement
and its record runs that migration again on the next start, and two replicas
starting together against one server may both run it. So every statement
must be idempotent (``CREATE TABLE IF NOT EXISTS``, ``ADD COLUMN IF NOT
EXISTS``, ...), and the record table is a ReplacingMergeTree read with FINAL,
so a version recorded twice still counts once.

The same files serve one node and a cluster (``CLICKHOUSE_CLUSTER``); each
statement is rendered by :func:`render` first:

=================  =====================  ==========================================
placeholder        one node               cluster ``c``
=================  =====================  ==========================================
``{local}``        (empty)                ``_local`` (the per-shard table)
``{on_cluster}``   (empty)                ``ON CLUSTER `c```
``{replicated}``   (empty)                ``Replicated`` (``ReplicatedReplacingMergeTree``)
``{cluster}``      ``''``                 ``'c'`` (for ``Distributed(...)``)
=================  =====================  ==========================================

A statement whose first line is ``-- cluster only`` (the Distributed table
over the ``_local`` ones) runs only on a cluster. Replicated engines take no
arguments: the server's ``default_replica_path`` / ``default_replica_name`` apply.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from livedesk.analytics.errors import MigrationError
from livedesk.platform.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from livedesk.analytics.store import Store

__all__ = [
    "MIGRATIONS",
    "Migration",
    "applied_versions",
    "load_migrations",
    "migrate",
    "render",
]

log = get_logger("livedesk.analytics.schema")

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")

_CLUSTER_ONLY = "-- cluster only"
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

_CREATE_RECORD_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations {on_cluster}
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = {replicated}ReplacingMergeTree(applied_at)
ORDER BY version
"""


def render(statement: str, cluster: str | None = None) -> str | None:
    """``statement`` with its placeholders filled; None when it is not for this topology.

    Raises:
        MigrationError: ``cluster`` is not a plain cluster name.
    """
    if cluster is not None and not _CLUSTER_NAME.match(cluster):
        raise MigrationError(f"cluster name {cluster!r} is not [A-Za-z0-9_.-]+")
    if statement.startswith(_CLUSTER_ONLY) and cluster is None:
        return None
    values = {
        "{local}": "_local" if cluster else "",
        "{on_cluster}": f"ON CLUSTER `{cluster}`" if cluster else "",
        "{replicated}": "Replicated" if cluster else "",
        "{cluster}": f"'{cluster}'" if cluster else "''",
    }
    for placeholder, value in values.items():
        statement = statement.replace(placeholder, value)
    return statement


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: its version, name and statements."""

    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """The statements of a migration file, without their terminating ``;``."""
    chunks = (chunk.strip() for chunk in _STATEMENT_END.split(sql))
    return tuple(chunk for chunk in chunks if chunk and not _only_comments(chunk))


def _only_comments(chunk: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in chunk.splitlines())


def load_migrations(package: str = "livedesk.analytics.migrations") -> tuple[Migration, ...]:
    """Read the migration files of ``package``, checking versions run 1, 2, 3, ... with no gap.

    Raises:
        MigrationError: a misnamed file, an empty one, or a missing or repeated version.
    """
    found: list[Migration] = []
    for entry in resources.files(package).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        statements = split_statements(entry.read_text(encoding="utf-8"))
        if not statements:
            raise MigrationError(f"migration file {entry.name!r} has no statement")
        found.append(Migration(int(match.group(1)), match.group(2), statements))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must be 1..n without gaps, found {versions}")
    return tuple(found)


MIGRATIONS: tuple[Migration, ...] = load_migrations()


async def applied_versions(store: Store, cluster: str | None = None) -> set[int]:
    """Versions recorded in ``schema_migrations`` (which is created if missing)."""
    record_table = render(_CREATE_RECORD_TABLE, cluster)
    assert record_table is not None
    await store.command(record_table)
    rows = await store.query("SELECT version FROM schema_migrations FINAL")
    return {int(row[0]) for row in rows}


async def migrate(
    store: Store, migrations: Sequence[Migration] = MIGRATIONS, *, cluster: str | None = None
) -> list[int]:
    """Apply the migrations not yet recorded, in order; the versions applied now.

    ``cluster`` names the ClickHouse cluster the tables are spread over (None: one node).

    A database migrated by newer code (a rollback) is used as it is, with a warning.

    Raises:
        StoreError: a statement failed; the versions before it stay applied.
    """
    done = await applied_versions(store, cluster)
    if unknown := sorted(done - {m.version for m in migrations}):
        log.warning("schema_newer_than_code", unknown_versions=unknown)
    applied: list[int] = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        for statement in migration.statements:
            rendered = render(statement, cluster)
            if rendered is not None:
                await store.command(rendered)
        await store.insert(
            "schema_migrations",
            [(migration.version, migration.name, dt.datetime.now(dt.UTC))],
            column_names=("version", "name", "applied_at"),
        )
        applied.append(migration.version)
        log.info("migration_applied", version=migration.version, name=migration.name)
    return applied
