"""A real PostgreSQL streaming replica of a primary, for replica-routing tests.

``pg_basebackup -R`` copies the primary into a temporary directory and
writes the standby settings; a ``postgres`` of the primary's version then
runs it on a free port (hot standby, streaming from the primary), as the OS
user owning the primary's cluster when the tests run as root (PostgreSQL
refuses root). Nothing of the primary is changed: when it does not allow
replication (``wal_level``, ``max_wal_senders``, no ``replication`` line in
pg_hba.conf, a role without REPLICATION), :class:`ReplicationUnavailable`
says why; tests then replicate a server of their own instead
(:func:`livedesk.platform.testing.pg_private.private_primary`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from livedesk.platform.testing.pg_private import (
    LocalServer,
    cluster_owner,
    local_server,
    run,
    server_bindir,
    start_server,
)
from livedesk.platform.testing.waiting import wait_until

__all__ = ["ReplicationUnavailable", "StreamingReplica", "streaming_replica"]

# Hot standby refuses to start with less of these than its primary.
_MATCH_PRIMARY = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)

StreamingReplica = LocalServer
"""A running standby: ``url(database)`` to read from it, ``stop()`` to take it down."""


class ReplicationUnavailable(RuntimeError):
    """The primary cannot feed a streaming replica (the message says why)."""


async def _primary_settings(primary_url: str) -> dict[str, str]:
    import asyncpg  # the "postgres" extra: only tests that use a database need it

    conn = await asyncpg.connect(primary_url)
    try:
        rows = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            ["wal_level", "server_version_num", "data_directory", *_MATCH_PRIMARY],
        )
        may_replicate = await conn.fetchval(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await conn.close()
    settings = {r["name"]: r["setting"] for r in rows}
    if settings.get("wal_level") not in ("replica", "logical"):
        raise ReplicationUnavailable(f"primary has wal_level={settings.get('wal_level')}")
    if int(settings.get("max_wal_senders", "0")) < 1:
        raise ReplicationUnavailable("primary has max_wal_senders=0")
    if not may_replicate:
        raise ReplicationUnavailable("the test role has no REPLICATION attribute")
    return settings


@asynccontextmanager
async def streaming_replica(primary_url: str) -> AsyncIterator[StreamingReplica]:
    """Run a streaming replica of ``primary_url`` until the block ends (then stop and delete it).

    Raises ReplicationUnavailable when the primary does not allow replication,
    NoServerBinaries when no PostgreSQL server programs are installed.
    """
    settings = await _primary_settings(primary_url)
    bindir = server_bindir(settings["server_version_num"])
    run_as = cluster_owner(settings.get("data_directory"))
    user = urlsplit(primary_url).username or "postgres"
    async with local_server(bindir, run_as, prefix="livedesk-replica-", user=user) as replica:
        backup = await run(
            [str(bindir / "pg_basebackup"), "-d", primary_url, "-D", str(replica.data_dir),
             "-R", "-X", "stream", "-c", "fast", "--no-sync"],
            run_as,
        )  # fmt: skip
        if backup.returncode != 0:
            if "pg_hba.conf" in backup.stderr or "replication" in backup.stderr:
                raise ReplicationUnavailable(backup.stderr.strip())
            raise RuntimeError(f"pg_basebackup failed: {backup.stderr.strip()}")
        await start_server(
            replica,
            {"hot_standby": "on", **{n: settings[n] for n in _MATCH_PRIMARY if n in settings}},
        )
        await _wait_streaming(replica)
        yield replica


async def _wait_streaming(replica: StreamingReplica) -> None:
    import asyncpg

    async def streaming() -> bool:
        try:
            conn = await asyncpg.connect(replica.url("postgres"))
        except (OSError, asyncpg.PostgresError):
            return False
        try:
            status = await conn.fetchval("SELECT status FROM pg_stat_wal_receiver")
            return bool(await conn.fetchval("SELECT pg_is_in_recovery()")) and status == "streaming"
        finally:
            await conn.close()

    await wait_until(streaming, timeout=60, what="the replica streaming from its primary")
