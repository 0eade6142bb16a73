"""Cold data: resolved conversations move from PostgreSQL to the archive, and are read back.

:class:`Archiver` (run by ``python -m livedesk.chat archive``, one per shard
database at a time through an advisory lock) takes conversations resolved
longer ago than ``ARCHIVE_AFTER_DAYS``, a batch of one tenant at a time, and
in ONE shard transaction holding their rows locked:

1. reads their messages and writes them as one archive object plus manifest
   (:mod:`livedesk.chat.archive_format`) to the object store;
2. verifies: reads the object and manifest back, checks both checksums and
   that every conversation decodes to exactly the rows just read;
3. deletes the messages (the deleted row count must equal the archived one),
   marks the conversations archived (``archived_at``, ``archive_key``) and
   adds a ``conversation.archived`` event per conversation to the outbox.

Any failure rolls the transaction back (nothing deleted) and removes the
object. The conversation rows stay, so listings and ``GET /conversations/{id}``
are unchanged; :class:`ArchiveReader` serves their history from the archive.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from livedesk.chat.archive_format import (
    ArchiveCorrupt,
    Entry,
    Manifest,
    build_object,
    decode_member,
    decode_object,
    manifest_key,
    object_key,
)
from livedesk.chat.archive_store import ObjectMissing, ObjectStore
from livedesk.chat.conversations import PRODUCER
from livedesk.chat.models import Conversation, Message, record
from livedesk.chat.shards import Shards
from livedesk.contracts.events.v1.conversation_pb2 import ConversationArchived
from livedesk.platform.bus import new_event
from livedesk.platform.bus.outbox import Outbox
from livedesk.platform.ids import uuid7
from livedesk.platform.logging import get_logger
from livedesk.platform.postgres import Connection

__all__ = ["ArchiveReader", "ArchiveReport", "Archiver", "remove_from_archive"]

log = get_logger("livedesk.chat.archive")

_ARCHIVER_LOCK = 0x4C444152434856  # "LDARCHV": one archiver per shard database


@dataclass
class ArchiveReport:
    """What one archive run did."""

    conversations: int = 0
    messages: int = 0
    objects: int = 0
    busy_databases: list[str] = field(default_factory=list)


async def _write_verified(store: ObjectStore, data: bytes, manifest: Manifest) -> None:
    """Write object and manifest, then read both back and check them (ArchiveCorrupt if not)."""
    await store.put(manifest.key, data)
    await store.put(manifest_key(manifest.key), manifest.to_bytes())
    back = Manifest.from_bytes(await store.get(manifest_key(manifest.key)))
    if back != manifest:
        raise ArchiveCorrupt(f"{manifest.key}: manifest read back differs")
    decode_object(back, await store.get(manifest.key))


async def _discard(store: ObjectStore, key: str) -> None:
    """Remove an object and its manifest (object first: a manifest alone holds no data)."""
    await store.delete(key)
    await store.delete(manifest_key(key))


class Archiver:
    """Moves old resolved conversations' messages into the archive, shard by shard."""

    def __init__(
        self,
        shards: Shards,
        store: ObjectStore,
        *,
        after: dt.timedelta,
        batch_size: int = 200,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.shards = shards
        self.store = store
        self.after = after
        self.batch_size = batch_size
        self._now = now

    async def run_once(self) -> ArchiveReport:
        """Archive everything due on every shard database this process gets the lock of."""
        report = ArchiveReport()
        for name, pool in self.shards.distinct().items():
            async with pool.acquire() as lock_conn:
                if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", _ARCHIVER_LOCK):
                    report.busy_databases.append(name)
                    continue
                try:
                    while (done := await self._batch(pool)) is not None:
                        report.conversations += done[0]
                        report.messages += done[1]
                        report.objects += 1
                finally:
                    await lock_conn.execute("SELECT pg_advisory_unlock($1)", _ARCHIVER_LOCK)
        if report.conversations:
            log.info(
                "archived",
                conversations=report.conversations,
                messages=report.messages,
                objects=report.objects,
            )
        return report

    async def _batch(self, pool: asyncpg.Pool) -> tuple[int, int] | None:
        """Archive one batch (one tenant); (conversations, messages), or None when none is due."""
        now = self._now()
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, tenant_id, visitor_id, last_seq FROM conversations
                   WHERE status = 'resolved' AND archived_at IS NULL AND resolved_at < $1
                   ORDER BY tenant_id, resolved_at LIMIT $2
                   FOR UPDATE SKIP LOCKED""",
                now - self.after,
                self.batch_size,
            )
            if not rows:
                return None
            tenant_id = rows[0]["tenant_id"]
            rows = [r for r in rows if r["tenant_id"] == tenant_id]
            ids = [r["id"] for r in rows]
            by_conversation: dict[uuid.UUID, list[Message]] = defaultdict(list)
            for m in await conn.fetch(
                """SELECT * FROM messages WHERE conversation_id = ANY($1::uuid[])
                   ORDER BY conversation_id, seq""",
                ids,
            ):
                by_conversation[m["conversation_id"]].append(record(Message, m))
            key = object_key(tenant_id, uuid7(), now)
            content = [
                (r["id"], r["visitor_id"], r["last_seq"], by_conversation[r["id"]]) for r in rows
            ]
            data, manifest = build_object(key, tenant_id, content, now)
            try:
                await _write_verified(self.store, data, manifest)
                await self._verify_content(manifest, data, by_conversation)
                await self._delete_hot(conn, manifest)
            except BaseException:
                # Shielded: a cancelled run must not leave a copy nobody points at.
                await asyncio.shield(_discard(self.store, key))
                raise
        return len(rows), manifest.messages

    @staticmethod
    async def _verify_content(
        manifest: Manifest, data: bytes, expected: dict[uuid.UUID, list[Message]]
    ) -> None:
        decoded = decode_object(manifest, data)
        for cid, messages in expected.items():
            if decoded.get(str(cid)) != messages:
                raise ArchiveCorrupt(f"{manifest.key}: conversation {cid} differs from PostgreSQL")

    @staticmethod
    async def _delete_hot(conn: Connection, manifest: Manifest) -> None:
        """Delete the archived messages and mark the conversations, checking the counts."""
        ids = [uuid.UUID(e.conversation_id) for e in manifest.conversations]
        deleted = {
            r["conversation_id"]: r["n"]
            for r in await conn.fetch(
                """WITH d AS (DELETE FROM messages WHERE conversation_id = ANY($1::uuid[])
                              RETURNING conversation_id)
                   SELECT conversation_id, count(*) AS n FROM d GROUP BY conversation_id""",
                ids,
            )
        }
        for e in manifest.conversations:
            if deleted.get(uuid.UUID(e.conversation_id), 0) != e.messages:
                raise ArchiveCorrupt(f"{manifest.key}: {e.conversation_id} row count changed")
        rows = await conn.fetch(
            """UPDATE conversations SET archived_at = now(), archive_key = $2
               WHERE id = ANY($1::uuid[]) RETURNING id, tenant_id""",
            ids,
            manifest.key,
        )
        counts = {e.conversation_id: e for e in manifest.conversations}
        await Outbox.add(
            conn,
            [
                new_event(
                    ConversationArchived(
                        archive_key=manifest.key,
                        message_count=counts[str(r["id"])].messages,
                        last_seq=counts[str(r["id"])].last_seq,
                    ),
                    tenant_id=str(r["tenant_id"]),
                    conversation_id=str(r["id"]),
                    producer=PRODUCER,
                )
                for r in rows
            ],
            notify=False,
        )


class ArchiveReader:
    """History of archived conversations, from the archive (manifests cached: objects are
    immutable, so a manifest is valid for as long as its object exists)."""

    def __init__(self, store: ObjectStore, *, cached_manifests: int = 256) -> None:
        self.store = store
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._max = cached_manifests

    async def _manifest(self, key: str) -> Manifest:
        manifest = self._manifests.pop(key, None)
        if manifest is None:
            manifest = Manifest.from_bytes(await self.store.get(manifest_key(key)))
        self._manifests[key] = manifest
        if len(self._manifests) > self._max:
            self._manifests.popitem(last=False)
        return manifest

    async def messages(self, conversation: Conversation) -> list[Message]:
        """Every message of an archived conversation, oldest first.

        ObjectMissing when its object is gone (rewritten by an erasure since
        the row was read: read the row again and retry).
        """
        if conversation.archive_key is None:
            raise ValueError(f"conversation {conversation.id} is not archived")
        try:
            entry: Entry = (await self._manifest(conversation.archive_key)).entry(conversation.id)
        except ArchiveCorrupt:
            raise ObjectMissing(conversation.archive_key) from None
        start = entry.offset
        member = await self.store.get(conversation.archive_key, start, start + entry.length)
        return decode_member(entry, member)

    @staticmethod
    def after(messages: Sequence[Message], after_seq: int, limit: int) -> list[Message]:
        """The page of ``messages`` after ``after_seq`` (as ``messages_after``)."""
        return [m for m in messages if m.seq > after_seq][:limit]

    @staticmethod
    def before(messages: Sequence[Message], before_seq: int, limit: int) -> list[Message]:
        """The page of ``messages`` just before ``before_seq`` (as ``messages_before``)."""
        return [m for m in messages if m.seq < before_seq][-limit:] if limit > 0 else []


async def remove_from_archive(
    store: ObjectStore, shards: Shards, key: str, drop: Callable[[Entry], bool]
) -> int:
    """Remove the conversations ``drop`` selects from archive object ``key``; messages removed.

    The others are written to a new object (verified), their rows repointed
    to it, then the old object and manifest are deleted. Idempotent: a
    missing object or manifest counts as already done.
    """
    try:
        manifest = Manifest.from_bytes(await store.get(manifest_key(key)))
    except ObjectMissing:
        return 0
    dropped = [e for e in manifest.conversations if drop(e)]
    if not dropped:
        return 0
    kept = [e for e in manifest.conversations if not drop(e)]
    if kept:
        try:
            decoded = decode_object(manifest, await store.get(key))
        except ObjectMissing:
            decoded = None  # removed after a crash mid-way: only the manifest is left
        if decoded is not None:
            await _rewrite(store, shards, manifest, kept, decoded)
    await _discard(store, key)
    return sum(e.messages for e in dropped)


async def _rewrite(
    store: ObjectStore,
    shards: Shards,
    old: Manifest,
    kept: list[Entry],
    decoded: dict[str, list[Message]],
) -> None:
    now = dt.datetime.now(dt.UTC)
    tenant_id = uuid.UUID(old.tenant_id)
    key = object_key(tenant_id, uuid7(), now)
    content = [
        (
            uuid.UUID(e.conversation_id),
            uuid.UUID(e.visitor_id),
            e.last_seq,
            decoded[e.conversation_id],
        )
        for e in kept
    ]
    data, manifest = build_object(key, tenant_id, content, now)
    await _write_verified(store, data, manifest)
    for database, ids in shards.group(uuid.UUID(e.conversation_id) for e in kept).items():
        await shards.pool(database).execute(
            "UPDATE conversations SET archive_key = $2 WHERE id = ANY($1::uuid[]) "
            "AND archive_key = $3",
            ids,
            key,
            old.key,
        )
