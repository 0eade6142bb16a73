"""Deleting personal data for good: "forget this visitor" (GDPR) and tenant retention.

Both delete whole conversations everywhere chat keeps them, in an order that
a crash at any point leaves repairable by running again (both are
idempotent):

1. Redis: the hot-message cache of each conversation (with a tombstone so
   in-flight write-throughs cannot refill it);
2. the archive: objects holding them are rewritten without them
   (:func:`livedesk.chat.archive.remove_from_archive`);
3. each shard: messages, read state, CSAT, index queue and conversation rows;
4. the directory: index entries (and for an erasure the visitor and its
   refresh tokens), and the event, through the outbox in the SAME
   transaction as that last deletion: ``visitor.erased`` for an erasure (on
   the directory), ``conversation.purged`` per conversation for retention
   (on the conversation's shard, with its rows). Other services delete their
   copies when the event arrives.

An erasure request is recorded first (``erasure_requests``, one per visitor);
if a step fails it stays ``pending`` and the archive job finishes it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from livedesk.chat.archive import remove_from_archive
from livedesk.chat.archive_format import is_manifest, object_of_manifest
from livedesk.chat.archive_store import ObjectStore
from livedesk.chat.conversations import PRODUCER, ConversationStore
from livedesk.chat.errors import NotFound
from livedesk.contracts.events.v1.conversation_pb2 import ConversationPurged
from livedesk.contracts.events.v1.visitor_pb2 import ErasureScope, VisitorErased
from livedesk.platform.bus import new_event
from livedesk.platform.bus.outbox import Outbox
from livedesk.platform.ids import uuid7
from livedesk.platform.logging import get_logger
from livedesk.platform.postgres import Connection

__all__ = ["Eraser", "ErasureRequest", "PurgeReport"]

log = get_logger("livedesk.chat.erasure")


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """A "forget this visitor" request and where it stands."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    visitor_id: uuid.UUID
    requested_by: uuid.UUID
    status: str
    conversations: int
    messages: int
    last_error: str | None
    created_at: dt.datetime
    completed_at: dt.datetime | None

    def to_json(self) -> dict[str, object]:
        """The API's view of the request."""
        return {
            "id": str(self.id),
            "visitor_id": str(self.visitor_id),
            "requested_by": str(self.requested_by),
            "status": self.status,
            "conversations": self.conversations,
            "messages": self.messages,
            "created_at": self.created_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
        }


def _request(row: Any) -> ErasureRequest:
    return ErasureRequest(**{k: row[k] for k in ErasureRequest.__dataclass_fields__})


@dataclass
class PurgeReport:
    """What a retention run deleted."""

    conversations: int = 0
    messages: int = 0


async def _delete_rows(conn: Connection, ids: Sequence[uuid.UUID]) -> int:
    """Delete conversations and everything hanging off them on one shard; messages deleted."""
    deleted: int = await conn.fetchval(
        """WITH d AS (DELETE FROM messages WHERE conversation_id = ANY($1::uuid[]) RETURNING 1)
           SELECT count(*) FROM d""",
        ids,
    )
    for table in ("read_state", "csat", "conversation_index_queue"):
        await conn.execute(f"DELETE FROM {table} WHERE conversation_id = ANY($1::uuid[])", ids)
    await conn.execute("DELETE FROM conversations WHERE id = ANY($1::uuid[])", ids)
    return deleted


class Eraser:
    """Visitor erasure and tenant retention over the directory, the shards and the archive."""

    def __init__(
        self, directory: asyncpg.Pool, conversations: ConversationStore, archive: ObjectStore
    ) -> None:
        self.directory = directory
        self.conversations = conversations
        self.shards = conversations.shards
        self.archive = archive

    # --- retention policy ----------------------------------------------------

    async def retention_days(self, tenant_id: uuid.UUID) -> int | None:
        """The tenant's retention period in days (None: kept for ever)."""
        days: int | None = await self.directory.fetchval(
            "SELECT retention_days FROM tenants WHERE id = $1", tenant_id
        )
        return days

    async def set_retention_days(self, tenant_id: uuid.UUID, days: int | None) -> None:
        """Set the tenant's retention period (None: keep for ever)."""
        await self.directory.execute(
            "UPDATE tenants SET retention_days = $2 WHERE id = $1", tenant_id, days
        )

    async def purge_expired(self, *, batch_size: int = 200) -> PurgeReport:
        """Delete every conversation resolved longer ago than its tenant's retention period."""
        report = PurgeReport()
        tenants = await self.directory.fetch(
            "SELECT id, retention_days FROM tenants WHERE retention_days IS NOT NULL"
        )
        for tenant in tenants:
            for pool in self.shards.distinct().values():
                while True:
                    done = await self._purge_batch(
                        pool, tenant["id"], tenant["retention_days"], batch_size
                    )
                    report.conversations += done[0]
                    report.messages += done[1]
                    if done[0] < batch_size:
                        break
        if report.conversations:
            log.info("retention_purged", **vars(report))
        return report

    async def _purge_batch(
        self, pool: asyncpg.Pool, tenant_id: uuid.UUID, days: int, batch_size: int
    ) -> tuple[int, int]:
        expired = """tenant_id = $1 AND status = 'resolved'
                     AND resolved_at < now() - make_interval(days => $2)"""
        rows = await pool.fetch(
            f"SELECT id, archive_key FROM conversations WHERE {expired} "
            "ORDER BY resolved_at LIMIT $3",
            tenant_id,
            days,
            batch_size,
        )
        if not rows:
            return 0, 0
        ids = {r["id"] for r in rows}
        messages = await self._clear_copies(
            ids, {r["archive_key"] for r in rows if r["archive_key"]}
        )
        async with pool.acquire() as conn, conn.transaction():
            # Re-checked under lock: one reopened meanwhile is no longer expired.
            locked = await conn.fetch(
                f"SELECT id, visitor_id FROM conversations WHERE {expired} "
                "AND id = ANY($3::uuid[]) FOR UPDATE",
                tenant_id,
                days,
                list(ids),
            )
            purge = [r["id"] for r in locked]
            messages += await _delete_rows(conn, purge)
            await Outbox.add(
                conn,
                [
                    new_event(
                        ConversationPurged(visitor_id=str(r["visitor_id"]), retention_days=days),
                        tenant_id=str(tenant_id),
                        conversation_id=str(r["id"]),
                        producer=PRODUCER,
                    )
                    for r in locked
                ],
                notify=False,
            )
        await self.directory.execute(
            "DELETE FROM conversation_index WHERE id = ANY($1::uuid[])", purge
        )
        return len(rows), messages

    async def _clear_copies(
        self, ids: set[uuid.UUID], keys: set[str], visitor_id: uuid.UUID | None = None
    ) -> int:
        """Drop the conversations' copies in Redis and in archive objects ``keys``.

        With ``visitor_id``, every archive object of the tenant is searched
        too, so that copies no row points at (a crash mid-way) are found.
        """
        for cid in ids:
            await self.conversations.invalidate_cached(cid)
        wanted = {str(i) for i in ids}
        visitor = str(visitor_id) if visitor_id else None
        removed = 0
        for key in sorted(keys):
            removed += await remove_from_archive(
                self.archive,
                self.shards,
                key,
                lambda e: e.conversation_id in wanted or e.visitor_id == visitor,
            )
        return removed

    # --- visitor erasure -----------------------------------------------------

    async def request(
        self, tenant_id: uuid.UUID, visitor_id: uuid.UUID, requested_by: uuid.UUID
    ) -> ErasureRequest:
        """Record a request to forget the visitor (or return the existing one).

        NotFound if the tenant has no such visitor and never had a request for it.
        """
        row = await self.directory.fetchrow(
            """INSERT INTO erasure_requests (id, tenant_id, visitor_id, requested_by)
               SELECT $1, $2, $3, $4
               WHERE EXISTS (SELECT 1 FROM visitors WHERE id = $3 AND tenant_id = $2)
               ON CONFLICT (tenant_id, visitor_id) DO NOTHING RETURNING *""",
            uuid7(),
            tenant_id,
            visitor_id,
            requested_by,
        )
        if row is None:
            try:
                return await self.get(tenant_id, visitor_id)
            except NotFound:
                raise NotFound("no such visitor") from None
        return _request(row)

    async def get(self, tenant_id: uuid.UUID, visitor_id: uuid.UUID) -> ErasureRequest:
        """The erasure request of the visitor (NotFound if none)."""
        row = await self.directory.fetchrow(
            "SELECT * FROM erasure_requests WHERE tenant_id = $1 AND visitor_id = $2",
            tenant_id,
            visitor_id,
        )
        if row is None:
            raise NotFound("no erasure was requested for this visitor")
        return _request(row)

    async def run(self, request: ErasureRequest) -> ErasureRequest:
        """Carry the request out (again, if it was done: nothing left is harmless)."""
        tenant_id, visitor_id = request.tenant_id, request.visitor_id
        found: dict[uuid.UUID, str | None] = {}
        for pool in self.shards.distinct().values():
            for r in await pool.fetch(
                """SELECT id, archive_key FROM conversations
                   WHERE tenant_id = $1 AND visitor_id = $2""",
                tenant_id,
                visitor_id,
            ):
                found[r["id"]] = r["archive_key"]
        for r in await self.directory.fetch(
            "SELECT id FROM conversation_index WHERE tenant_id = $1 AND visitor_id = $2",
            tenant_id,
            visitor_id,
        ):
            found.setdefault(r["id"], None)
        # Every object of the tenant is searched (by visitor too), not only those rows name.
        listed = await self.archive.list_keys(f"{tenant_id}/")
        keys = {object_of_manifest(k) for k in listed if is_manifest(k)}
        messages = await self._clear_copies(set(found), keys, visitor_id)
        for database, ids in self.shards.group(found).items():
            async with self.shards.pool(database).acquire() as conn, conn.transaction():
                messages += await _delete_rows(conn, ids)
        async with self.directory.acquire() as conn, conn.transaction():
            await conn.execute(
                """DELETE FROM conversation_index
                   WHERE tenant_id = $1 AND (visitor_id = $2 OR id = ANY($3::uuid[]))""",
                tenant_id,
                visitor_id,
                list(found),
            )
            await conn.execute(
                "DELETE FROM refresh_tokens WHERE tenant_id = $1 AND subject_id = $2",
                tenant_id,
                visitor_id,
            )
            await conn.execute(
                "DELETE FROM visitors WHERE tenant_id = $1 AND id = $2", tenant_id, visitor_id
            )
            row = await conn.fetchrow(
                """UPDATE erasure_requests
                   SET status = 'done', completed_at = now(), last_error = NULL,
                       conversations = GREATEST(conversations, $2), messages = messages + $3
                   WHERE id = $1 RETURNING *""",
                request.id,
                len(found),
                messages,
            )
            await Outbox.add(
                conn,
                [
                    new_event(
                        VisitorErased(
                            visitor_id=str(visitor_id),
                            requested_by=str(request.requested_by),
                            scope=ErasureScope.ERASURE_SCOPE_VISITOR_CONVERSATIONS,
                            conversation_ids=sorted(str(i) for i in found),
                            request_id=str(request.id),
                        ),
                        tenant_id=str(tenant_id),
                        producer=PRODUCER,
                    )
                ],
            )
        log.info(
            "visitor_erased",
            tenant_id=str(tenant_id),
            request_id=str(request.id),
            conversations=len(found),
            messages=messages,
        )
        return _request(row)

    async def failed(self, request: ErasureRequest, error: BaseException) -> ErasureRequest:
        """Note why the request is still pending (the archive job retries it)."""
        row = await self.directory.fetchrow(
            "UPDATE erasure_requests SET last_error = $2 WHERE id = $1 RETURNING *",
            request.id,
            repr(error)[:500],
        )
        log.warning("erasure_failed", request_id=str(request.id), error=repr(error))
        return _request(row)

    async def run_pending(self) -> int:
        """Finish the pending requests (after a failure); how many are now done."""
        done = 0
        for row in await self.directory.fetch(
            "SELECT * FROM erasure_requests WHERE status = 'pending' ORDER BY created_at"
        ):
            request = _request(row)
            try:
                await self.run(request)
                done += 1
            except Exception as exc:  # one failing request must not stop the others
                await self.failed(request, exc)
        return done
