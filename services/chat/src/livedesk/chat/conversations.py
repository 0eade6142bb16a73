"""The conversation data-access layer: every read and write of conversation data goes here.

Keyed by conversation_id: each call goes to the database of the
conversation's logical shard (:mod:`livedesk.chat.shards`), history reads to
that database's read replica when one is configured and fresh enough, the
recent messages of active conversations from the hot cache in Redis
(:mod:`livedesk.chat.hot_cache`) when it provably holds them all. Every
state change commits with its event in the outbox (same transaction, same
shard), so the bus sees exactly what the database holds; listings read the
per-tenant index on the directory database (:mod:`livedesk.chat.index`).
See docs/sharding.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from livedesk.chat.errors import Conflict, NotFound
from livedesk.chat.group_commit import Append, GroupCommit, Guard
from livedesk.chat.hot_cache import HotCache
from livedesk.chat.index import ConversationIndex, queue_change
from livedesk.chat.message_events import message_event_prefix
from livedesk.chat.models import Conversation, Inbox, Message, SenderKind, record
from livedesk.chat.shards import ShardMap, Shards
from livedesk.contracts.events.v1.common_pb2 import ActorKind
from livedesk.contracts.events.v1.conversation_pb2 import (
    ConversationCreated,
    ConversationReopened,
    ConversationResolved,
)
from livedesk.contracts.events.v1.csat_pb2 import CsatSubmitted
from livedesk.platform.bus import new_event
from livedesk.platform.bus.outbox import Outbox
from livedesk.platform.ids import uuid7, uuid7_str
from livedesk.platform.logging import get_logger
from livedesk.platform.postgres import Connection

__all__ = ["PRODUCER", "REPLICA_READS", "ConversationStore", "Page"]

log = get_logger("livedesk.chat.conversations")

REPLICA_READS = Counter(
    "livedesk_chat_replica_reads_total",
    "Reads that could go to a read replica, by outcome (replica: served by it; "
    "fallback: it lagged, served by the primary; error: it failed, taken out of rotation).",
    ["outcome"],
)
REPLICA_TIMEOUT = 2.0
"""Seconds a replica query may take before the primary answers instead."""

_SEEN_MAX = 100_000
"""Conversations whose freshest known state a pod remembers (for read-your-writes)."""

PRODUCER = "chat"

_ACTOR_KIND = {
    "visitor": ActorKind.ACTOR_KIND_VISITOR,
    "agent": ActorKind.ACTOR_KIND_AGENT,
    "admin": ActorKind.ACTOR_KIND_AGENT,
    "system": ActorKind.ACTOR_KIND_SYSTEM,
}


def actor_kind(role: str) -> ActorKind.ValueType:
    """The event's ActorKind for a caller role or sender kind."""
    return _ACTOR_KIND[role]


_QUEUE_FROM_C = """
    INSERT INTO conversation_index_queue (conversation_id, version)
    SELECT id, index_version FROM c
    ON CONFLICT (conversation_id) DO UPDATE
    SET version = GREATEST(conversation_index_queue.version, EXCLUDED.version)"""


_NO_REPLICA: Any = object()
"""What ``_from_replica`` returns when no replica is in rotation (None is a row's absence)."""


class Page:
    """A page of conversations and the cursor of the next one."""

    def __init__(self, items: list[Conversation], next_cursor: str | None) -> None:
        self.items = items
        self.next_cursor = next_cursor


async def _emit(
    conn: Connection, conversation: Conversation, payload: ProtoMessage, *, notify: bool = True
) -> None:
    await Outbox.add(
        conn,
        [
            new_event(
                payload,
                tenant_id=str(conversation.tenant_id),
                conversation_id=str(conversation.id),
                producer=PRODUCER,
            )
        ],
        notify=notify,
    )


class ConversationStore:
    """Conversations, messages, read state and CSAT, each on its conversation's shard.

    ``pool`` is the directory database (holding the conversation index);
    without ``shards`` every logical shard is on it too (one database).

    Reads from replicas are never older than what this pod has written or
    read from a primary for the conversation (read-your-writes, monotonic
    reads per pod), nor than the seq the caller says it already has.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        shards: Shards | None = None,
        index: ConversationIndex | None = None,
        *,
        hot: HotCache | None = None,
        batch_max: int = 100,
    ) -> None:
        """``batch_max``: messages one group-commit statement may hold (1: one each)."""
        self._pool = pool
        self.shards = shards or Shards(ShardMap.single("(directory)"), {"main": pool})
        self.index = index or ConversationIndex(pool)
        self.hot = hot
        self._batch_max = batch_max
        self._writers: dict[int, GroupCommit] = {}
        self._seen: OrderedDict[uuid.UUID, tuple[int, int]] = OrderedDict()
        self.replica_reads = 0
        self.replica_fallbacks = 0
        self.replica_errors = 0

    # --- routing and freshness ---------------------------------------------

    def _primary(self, conversation_id: uuid.UUID) -> asyncpg.Pool:
        return self.shards.primary(conversation_id)

    def _group_commit(self, shard: asyncpg.Pool) -> GroupCommit:
        writer = self._writers.get(id(shard))
        if writer is None:
            writer = self._writers[id(shard)] = GroupCommit(shard, max_batch=self._batch_max)
        return writer

    def _note(self, conversation_id: uuid.UUID, seq: int = 0, version: int = 0) -> None:
        """Remember that (seq, index_version) of the conversation exist (never decreases)."""
        old_seq, old_version = self._seen.pop(conversation_id, (0, 0))
        self._seen[conversation_id] = (max(seq, old_seq), max(version, old_version))
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)

    def _note_row(self, row: Any) -> None:
        self._note(row["id"], row["last_seq"], row["index_version"])

    def _floor(self, conversation_id: uuid.UUID) -> tuple[int, int]:
        return self._seen.get(conversation_id, (0, 0))

    async def _from_replica(
        self, conversation_id: uuid.UUID, sql: str, *args: object, one: bool = False
    ) -> Any:
        """Rows (or one row) from the replica; ``_NO_REPLICA`` if none is in rotation.

        A failing or stalled replica is taken out of rotation (the primary
        answers meanwhile): a stopped replica costs one failed query, not an error.
        """
        replica = self.shards.replica(conversation_id)
        if replica is None:
            return _NO_REPLICA
        try:
            async with asyncio.timeout(REPLICA_TIMEOUT):
                if one:
                    return await replica.fetchrow(sql, *args)
                return await replica.fetch(sql, *args)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.shards.replica_failed(conversation_id)
            self.replica_errors += 1
            REPLICA_READS.labels("error").inc()
            log.warning(
                "replica_out_of_rotation",
                database=self.shards.database_of(conversation_id),
                error=repr(exc),
                retry_after=self.shards.replica_retry_after,
            )
            return _NO_REPLICA

    def _served_by_replica(self, served: bool) -> bool:
        if served:
            self.replica_reads += 1
            REPLICA_READS.labels("replica").inc()
        else:
            self.replica_fallbacks += 1
            REPLICA_READS.labels("fallback").inc()
        return served

    async def _cache(self, message: Message) -> None:
        if self.hot is not None:
            await self.hot.add(message)

    async def invalidate_cached(self, conversation_id: uuid.UUID) -> None:
        """Drop the conversation's hot-cached messages: call after erasing or changing
        stored messages (raises if Redis did not confirm; retry then)."""
        if self.hot is not None:
            await self.hot.invalidate(conversation_id)

    async def _changed(self, shard: asyncpg.Pool, row: Any) -> Conversation:
        """After a committed change: remember it, update the index, the record."""
        self._note_row(row)
        await self.index.put(shard, row)
        return record(Conversation, row)  # type: ignore[no-any-return]

    # --- conversations -------------------------------------------------------

    async def create(
        self,
        inbox: Inbox,
        visitor_id: uuid.UUID,
        *,
        subject: str = "",
        priority: int = 2,
    ) -> Conversation:
        """Open a conversation (queued) and emit ``conversation.created``."""
        conversation_id = uuid7()
        shard = self._primary(conversation_id)
        async with shard.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO conversations
                       (id, tenant_id, inbox_id, visitor_id, priority, subject, team_id,
                        index_version)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, 1) RETURNING *""",
                conversation_id,
                inbox.tenant_id,
                inbox.id,
                visitor_id,
                priority,
                subject,
                inbox.team_id,
            )
            conversation: Conversation = record(Conversation, row)
            await _emit(
                conn,
                conversation,
                ConversationCreated(
                    inbox_id=str(inbox.id),
                    visitor_id=str(visitor_id),
                    priority=priority,  # type: ignore[arg-type]
                    subject=subject,
                    required_skills=inbox.required_skills,
                    team_id=str(inbox.team_id) if inbox.team_id else "",
                ),
            )
            await queue_change(conn, row)
        return await self._changed(shard, row)

    async def get(
        self, tenant_id: uuid.UUID, conversation_id: uuid.UUID, *, replica_ok: bool = False
    ) -> Conversation:
        """The conversation; NotFound outside the tenant.

        ``replica_ok``: a read-only caller; served by the replica when it has
        at least the state this pod has seen, else by the primary.
        """
        sql = "SELECT * FROM conversations WHERE id = $1 AND tenant_id = $2"
        if replica_ok:
            row = await self._from_replica(
                conversation_id, sql, conversation_id, tenant_id, one=True
            )
            if row is not _NO_REPLICA:
                floor_seq, floor_version = self._floor(conversation_id)
                if self._served_by_replica(
                    row is not None
                    and row["last_seq"] >= floor_seq
                    and row["index_version"] >= floor_version
                ):
                    return record(Conversation, row)  # type: ignore[no-any-return]
        row = await self._primary(conversation_id).fetchrow(sql, conversation_id, tenant_id)
        if row is None:
            raise NotFound("no such conversation")
        self._note_row(row)
        return record(Conversation, row)  # type: ignore[no-any-return]

    async def page(
        self,
        tenant_id: uuid.UUID,
        *,
        visitor_id: uuid.UUID | None = None,
        agent_id: uuid.UUID | None = None,
        visible_to_agent: tuple[uuid.UUID, Sequence[uuid.UUID]] | None = None,
        status: str | None = None,
        before: uuid.UUID | None = None,
        limit: int = 50,
    ) -> Page:
        """Newest first, filtered; ``before`` is the cursor (a conversation id).

        The index (directory database) picks the page's ids; the rows come
        from their shards, one query per database involved, and are checked
        against the filter again, so a lagging index entry can leave a row
        out of a page but never show one that does not match.
        """
        clauses = ["tenant_id = $1"]
        args: list[object] = [tenant_id]

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if visitor_id is not None:
            clauses.append(f"visitor_id = {arg(visitor_id)}")
        if agent_id is not None:
            clauses.append(f"agent_id = {arg(agent_id)}")
        if visible_to_agent is not None:
            me, teams = visible_to_agent
            clauses.append(
                f"(agent_id = {arg(me)} OR (status = 'queued' AND "
                f"(team_id IS NULL OR team_id = ANY({arg(list(teams))}::uuid[]))))"
            )
        if status is not None:
            clauses.append(f"status = {arg(status)}")
        if before is not None:
            clauses.append(f"id < {arg(before)}")
        ids = await self.index.ids(clauses, args, limit + 1)
        page_ids = ids[:limit]
        found: dict[uuid.UUID, Conversation] = {}
        for database, group in self.shards.group(page_ids).items():
            rows = await self.shards.pool(database).fetch(
                "SELECT * FROM conversations WHERE id = ANY($1::uuid[]) AND tenant_id = $2",
                group,
                tenant_id,
            )
            for row in rows:
                found[row["id"]] = record(Conversation, row)

        def matches(c: Conversation) -> bool:
            if visitor_id is not None and c.visitor_id != visitor_id:
                return False
            if agent_id is not None and c.agent_id != agent_id:
                return False
            if visible_to_agent is not None:
                me, teams = visible_to_agent
                if c.agent_id != me and not (
                    c.status == "queued" and (c.team_id is None or c.team_id in teams)
                ):
                    return False
            return status is None or c.status == status

        items = [found[i] for i in page_ids if i in found and matches(found[i])]
        cursor = str(page_ids[-1]) if len(ids) > limit else None
        return Page(items, cursor)

    async def resolve(
        self, conversation: Conversation, actor_id: uuid.UUID, actor_role: str
    ) -> Conversation:
        """Mark resolved and emit ``conversation.resolved``; Conflict if already resolved."""
        shard = self._primary(conversation.id)
        async with shard.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """UPDATE conversations
                   SET status = 'resolved', resolved_at = now(), updated_at = now(),
                       queue_position = NULL, index_version = index_version + 1
                   WHERE id = $1 AND status <> 'resolved' RETURNING *""",
                conversation.id,
            )
            if row is None:
                raise Conflict("conversation is already resolved")
            resolved: Conversation = record(Conversation, row)
            await _emit(
                conn,
                resolved,
                ConversationResolved(
                    resolved_by=str(actor_id),
                    actor_kind=actor_kind(actor_role),
                    agent_id=str(conversation.agent_id or ""),
                ),
            )
            await queue_change(conn, row)
        return await self._changed(shard, row)

    async def reopen(
        self, conversation: Conversation, actor_id: uuid.UUID, actor_role: str
    ) -> Conversation:
        """Queue a resolved conversation again and emit ``conversation.reopened``."""
        shard = self._primary(conversation.id)
        async with shard.acquire() as conn, conn.transaction():
            row = await self._reopen(conn, conversation.id, actor_id, actor_role)
            if row is None:
                raise Conflict("conversation is not resolved")
        return await self._changed(shard, row)

    async def _reopen(
        self, conn: Connection, conversation_id: uuid.UUID, actor_id: uuid.UUID, actor_role: str
    ) -> Any:
        """Reopen inside the caller's transaction: the new row, or None if not resolved."""
        previous_agent = await conn.fetchval(
            "SELECT agent_id FROM conversations WHERE id = $1", conversation_id
        )
        row = await conn.fetchrow(
            """UPDATE conversations
               SET status = 'queued', agent_id = NULL, resolved_at = NULL, updated_at = now(),
                   index_version = index_version + 1
               WHERE id = $1 AND status = 'resolved' AND archived_at IS NULL RETURNING *""",
            conversation_id,
        )
        if row is None:
            return None
        reopened: Conversation = record(Conversation, row)
        await _emit(
            conn,
            reopened,
            ConversationReopened(
                reopened_by=str(actor_id),
                actor_kind=actor_kind(actor_role),
                previous_agent_id=str(previous_agent or ""),
            ),
        )
        await queue_change(conn, row)
        return row

    async def apply_assigned(
        self,
        conversation_id: uuid.UUID,
        agent_id: uuid.UUID,
        team_id: uuid.UUID | None,
        occurred_at: dt.datetime,
    ) -> Conversation | None:
        """Record the assignment service's decision (``conversation.assigned``).

        None when the conversation is resolved or a newer routing event was applied.
        """
        shard = self._primary(conversation_id)
        row = await shard.fetchrow(
            """WITH c AS (
                   UPDATE conversations
                   SET status = 'assigned', agent_id = $2, team_id = coalesce($3, team_id),
                       queue_position = NULL, updated_at = now(), routed_at = $4,
                       index_version = index_version + 1
                   WHERE id = $1 AND status <> 'resolved'
                     AND (routed_at IS NULL OR routed_at < $4)
                   RETURNING *),
               q AS ("""
            + _QUEUE_FROM_C
            + """)
               SELECT * FROM c""",
            conversation_id,
            agent_id,
            team_id,
            occurred_at,
        )
        return await self._changed(shard, row) if row else None

    async def apply_queued(
        self,
        conversation_id: uuid.UUID,
        position: int,
        team_id: uuid.UUID | None,
        occurred_at: dt.datetime,
    ) -> Conversation | None:
        """Record a queue placement (``conversation.queued``); None as for apply_assigned."""
        shard = self._primary(conversation_id)
        row = await shard.fetchrow(
            """WITH c AS (
                   UPDATE conversations
                   SET status = 'queued', agent_id = NULL, queue_position = $2,
                       team_id = coalesce($3, team_id), updated_at = now(), routed_at = $4,
                       index_version = index_version + 1
                   WHERE id = $1 AND status <> 'resolved'
                     AND (routed_at IS NULL OR routed_at < $4)
                   RETURNING *),
               q AS ("""
            + _QUEUE_FROM_C
            + """)
               SELECT * FROM c""",
            conversation_id,
            position,
            team_id,
            occurred_at,
        )
        return await self._changed(shard, row) if row else None

    # --- messages ------------------------------------------------------------

    async def append(
        self,
        *,
        tenant_id: uuid.UUID,
        conversation_id: uuid.UUID,
        sender_kind: SenderKind,
        sender_id: uuid.UUID,
        guard: Guard,
        body: str,
        client_msg_id: str | None,
        conn: Connection | None = None,
        committed: Callable[[Message, bool], None] | None = None,
    ) -> tuple[Message, bool] | None:
        """Append a message with the next ``seq``, in one statement; (message, created).

        Outside a caller's transaction (``conn``), concurrent appends to one
        database share a statement and a commit (:mod:`livedesk.chat.group_commit`).

        The conversation row must belong to the tenant, not be resolved, and
        match ``guard`` (the visitor's own, or assigned to the agent; admins
        need only the tenant); otherwise nothing is written and None comes
        back, for the caller to work out why. The seq is taken under the row's
        lock, so it is gap-free and strictly increasing; the message and its
        ``message.created`` outbox row commit together. A retry with the same
        ``client_msg_id`` returns the original message (``created`` False).
        ``committed`` is called with that result as soon as it is durable, before
        the write-through to the hot cache (the sender's ack need not wait for it).
        """
        message_id, created_at, event_id = uuid7(), dt.datetime.now(dt.UTC), uuid7_str()
        prefix = message_event_prefix(
            event_id=event_id,
            tenant_id=tenant_id,
            conversation_id=conversation_id,
            message_id=message_id,
            sender_kind=actor_kind(sender_kind),
            sender_id=sender_id,
            body=body,
            client_msg_id=client_msg_id,
            created_at=created_at,
            producer=PRODUCER,
        )
        item = Append(
            conversation_id, tenant_id, sender_id, guard, message_id, sender_kind, body,
            client_msg_id, created_at, event_id, prefix,
        )  # fmt: skip
        db: Connection | asyncpg.Pool = conn or self._primary(conversation_id)
        try:
            if conn is None:
                seq = await self._group_commit(self._primary(conversation_id)).append(item)
            else:
                seq = await item.one(conn)
        except asyncpg.UniqueViolationError:
            if client_msg_id is None:
                raise
            # A retry of a send that already committed: hand back the original.
            original = await db.fetchrow(
                """SELECT * FROM messages
                   WHERE conversation_id = $1 AND sender_id = $2 AND client_msg_id = $3""",
                conversation_id,
                sender_id,
                client_msg_id,
            )
            if original is None:
                raise
            duplicate: Message = record(Message, original)
            if committed is not None:
                committed(duplicate, False)
            return duplicate, False
        if seq is None:
            return None
        self._note(conversation_id, seq)
        message = Message(
            conversation_id, seq, message_id, tenant_id, sender_kind, sender_id, body,
            client_msg_id, created_at,
        )  # fmt: skip
        if conn is None:  # committed: write through (inside a caller's transaction, it does)
            if committed is not None:
                committed(message, True)
            await self._cache(message)
        return message, True

    async def reopen_and_append(
        self,
        conversation: Conversation,
        visitor_id: uuid.UUID,
        body: str,
        client_msg_id: str | None,
    ) -> tuple[Message, bool, Conversation]:
        """A visitor writes into their resolved conversation: reopen it, then append."""
        shard = self._primary(conversation.id)
        async with shard.acquire() as conn, conn.transaction():
            reopened = await self._reopen(conn, conversation.id, visitor_id, "visitor")
            if reopened is None:
                raise Conflict("conversation changed meanwhile; send again")
            appended = await self.append(
                tenant_id=conversation.tenant_id,
                conversation_id=conversation.id,
                sender_kind="visitor",
                sender_id=visitor_id,
                guard="visitor",
                body=body,
                client_msg_id=client_msg_id,
                conn=conn,
            )
        if appended is None:
            raise Conflict("conversation changed meanwhile; send again")
        if appended[1]:
            await self._cache(appended[0])
        return appended[0], appended[1], await self._changed(shard, reopened)

    async def messages_after(
        self, conversation_id: uuid.UUID, after_seq: int, limit: int, *, known_seq: int = 0
    ) -> list[Message]:
        """Messages with seq > ``after_seq``, oldest first.

        From the hot cache when it holds the whole page, else from the replica
        when configured, unless either lacks a message the caller
        (``after_seq``, ``known_seq``) or this pod already knows to exist: seq
        is gap-free, so a full page, or one reaching that seq, is exact.
        """
        floor = max(after_seq, known_seq, self._floor(conversation_id)[0])
        if self.hot is not None:
            cached = await self.hot.read(
                conversation_id, after_seq + 1, after_seq + limit, known=floor
            )
            if cached is not None:
                return cached
        sql = """SELECT * FROM messages WHERE conversation_id = $1 AND seq > $2
                 ORDER BY seq LIMIT $3"""
        rows = await self._from_replica(conversation_id, sql, conversation_id, after_seq, limit)
        if rows is not _NO_REPLICA:
            reached = rows[-1]["seq"] if rows else after_seq
            if self._served_by_replica(len(rows) >= limit or reached >= floor):
                return [record(Message, r) for r in rows]
        rows = await self._primary(conversation_id).fetch(sql, conversation_id, after_seq, limit)
        if rows:
            self._note(conversation_id, rows[-1]["seq"])
        return [record(Message, r) for r in rows]

    async def messages_before(
        self, conversation_id: uuid.UUID, before_seq: int, limit: int
    ) -> list[Message]:
        """Messages with seq < ``before_seq``, oldest first (the page just before).

        From the hot cache when it holds the whole page through seq
        ``before_seq - 1``, else from the replica when it holds that seq (then
        the page is exact), else from the primary.
        """
        if before_seq <= 1:
            return []
        if self.hot is not None:
            cached = await self.hot.read(
                conversation_id, max(1, before_seq - limit), before_seq - 1, known=before_seq - 1
            )
            if cached is not None:
                return cached
        sql = """SELECT * FROM (SELECT * FROM messages WHERE conversation_id = $1 AND seq < $2
                                ORDER BY seq DESC LIMIT $3) page ORDER BY seq"""
        rows = await self._from_replica(conversation_id, sql, conversation_id, before_seq, limit)
        if rows is not _NO_REPLICA and self._served_by_replica(
            bool(rows) and rows[-1]["seq"] == before_seq - 1
        ):
            return [record(Message, r) for r in rows]
        rows = await self._primary(conversation_id).fetch(sql, conversation_id, before_seq, limit)
        return [record(Message, r) for r in rows]

    # --- read state and CSAT -------------------------------------------------

    async def mark_read(
        self, conversation: Conversation, participant_id: uuid.UUID, seq: int
    ) -> int:
        """Advance the participant's last read seq (never backwards); the stored value."""
        value: int = await self._primary(conversation.id).fetchval(
            """INSERT INTO read_state (conversation_id, participant_id, last_read_seq)
               VALUES ($1, $2, LEAST($3, (SELECT last_seq FROM conversations WHERE id = $1)))
               ON CONFLICT (conversation_id, participant_id) DO UPDATE
               SET last_read_seq = GREATEST(read_state.last_read_seq, EXCLUDED.last_read_seq),
                   updated_at = now()
               RETURNING last_read_seq""",
            conversation.id,
            participant_id,
            seq,
        )
        return value

    async def read_states(self, conversation_id: uuid.UUID) -> dict[str, int]:
        """Last read seq by participant id."""
        rows = await self._primary(conversation_id).fetch(
            "SELECT participant_id, last_read_seq FROM read_state WHERE conversation_id = $1",
            conversation_id,
        )
        return {str(r["participant_id"]): r["last_read_seq"] for r in rows}

    async def submit_csat(self, conversation: Conversation, rating: int, comment: str) -> None:
        """Record the visitor's rating of a resolved conversation (once)."""
        if conversation.status != "resolved":
            raise Conflict("CSAT is asked after the conversation is resolved")
        async with self._primary(conversation.id).acquire() as conn, conn.transaction():
            try:
                await conn.execute(
                    """INSERT INTO csat (conversation_id, tenant_id, rating, comment)
                       VALUES ($1, $2, $3, $4)""",
                    conversation.id,
                    conversation.tenant_id,
                    rating,
                    comment,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict("this conversation was already rated") from None
            await _emit(
                conn,
                conversation,
                CsatSubmitted(
                    rating=rating,
                    comment=comment,
                    visitor_id=str(conversation.visitor_id),
                    agent_id=str(conversation.agent_id or ""),
                ),
            )


def _timestamp(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts
