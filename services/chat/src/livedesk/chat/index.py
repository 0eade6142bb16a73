"""The per-tenant conversation index on the directory database, and its repair loop.

Conversations live on their shard; listings (a tenant's, an agent's, a
visitor's conversations) read this index for the page of ids, then fetch the
rows from the shards that hold them. Consistency (docs/sharding.md): every
change to an indexed column commits on the shard together with a row in the
shard's ``conversation_index_queue``; right after the commit the writer
upserts the index (write-through) and drops the queue row; if that fails (pod
dies, directory unreachable) :class:`IndexSync` replays the queue. Upserts are
guarded by the conversation's ``index_version``, so late or repeated writes
never move the index backwards. The index therefore lags its shard only
between a commit and the write-through (or, after a failure, by at most one
sync interval once the directory answers).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from livedesk.chat.shards import Shards
from livedesk.platform.logging import get_logger
from livedesk.platform.postgres import Connection
from livedesk.platform.tasks import cancel_and_wait

__all__ = ["ConversationIndex", "IndexSync", "queue_change"]

log = get_logger("livedesk.chat.index")

_UPSERT = """
    INSERT INTO conversation_index
        (id, tenant_id, visitor_id, status, team_id, agent_id, version, synced_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, now())
    ON CONFLICT (id) DO UPDATE
    SET status = EXCLUDED.status, team_id = EXCLUDED.team_id, agent_id = EXCLUDED.agent_id,
        version = EXCLUDED.version, synced_at = now()
    WHERE conversation_index.version < EXCLUDED.version"""

_QUEUE = """
    INSERT INTO conversation_index_queue (conversation_id, version) VALUES ($1, $2)
    ON CONFLICT (conversation_id) DO UPDATE
    SET version = GREATEST(conversation_index_queue.version, EXCLUDED.version)"""

_DONE = "DELETE FROM conversation_index_queue WHERE conversation_id = $1 AND version <= $2"

_INDEX_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


async def queue_change(conn: Connection, row: Any) -> None:
    """Record, in the shard transaction of a change, that the index must follow it."""
    await conn.execute(_QUEUE, row["id"], row["index_version"])


def _entry(row: Any) -> tuple[object, ...]:
    return (
        row["id"],
        row["tenant_id"],
        row["visitor_id"],
        row["status"],
        row["team_id"],
        row["agent_id"],
        row["index_version"],
    )


class ConversationIndex:
    """Reads and writes of ``conversation_index`` (directory database)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put(self, shard: asyncpg.Pool, row: Any) -> None:
        """Write-through after a shard commit; on failure the queue row stays for IndexSync."""
        try:
            await self._pool.execute(_UPSERT, *_entry(row))
            await shard.execute(_DONE, row["id"], row["index_version"])
        except _INDEX_ERRORS as exc:
            log.warning("conversation_index_write_failed", error=repr(exc), id=str(row["id"]))

    async def put_many(self, rows: Sequence[Any]) -> None:
        """Upsert ``rows`` (conversation rows with ``index_version``)."""
        await self._pool.executemany(_UPSERT, [_entry(r) for r in rows])

    async def ids(self, clauses: list[str], args: list[object], limit: int) -> list[uuid.UUID]:
        """Ids of indexed conversations matching ``clauses``, newest first, ``limit`` of them."""
        rows = await self._pool.fetch(
            f"SELECT id FROM conversation_index WHERE {' AND '.join(clauses)} "
            f"ORDER BY id DESC LIMIT {int(limit)}",
            *args,
        )
        return [r["id"] for r in rows]


class IndexSync:
    """Replays each shard's ``conversation_index_queue`` into the index, until stopped.

    Every pod may run it: upserts are idempotent and version-guarded, so
    concurrent syncs are harmless (only redundant).
    """

    def __init__(
        self, shards: Shards, index: ConversationIndex, *, interval: float, batch: int = 500
    ) -> None:
        self._shards = shards
        self._index = index
        self._interval = interval
        self._batch = batch
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Replay what is queued on every shard now; the number of entries written."""
        total = 0
        for pool in self._shards.distinct().values():
            while True:
                rows = await pool.fetch(
                    """SELECT q.conversation_id, q.version AS queued, c.*
                       FROM conversation_index_queue q
                       LEFT JOIN conversations c ON c.id = q.conversation_id
                       ORDER BY q.conversation_id LIMIT $1""",
                    self._batch,
                )
                present = [r for r in rows if r["id"] is not None]
                if present:
                    await self._index.put_many(present)
                await pool.executemany(_DONE, [(r["conversation_id"], r["queued"]) for r in rows])
                total += len(present)
                if len(rows) < self._batch:
                    break
        return total

    def start(self) -> None:
        """Run in the background every ``interval`` seconds."""
        self._task = asyncio.create_task(self._run(), name="conversation-index-sync")

    async def stop(self) -> None:
        """Stop the background loop."""
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except _INDEX_ERRORS as exc:
                log.warning("conversation_index_sync_failed", error=repr(exc))
            await asyncio.sleep(self._interval)
