"""Group commit of message appends: concurrent sends share one statement and one commit.

A send is acknowledged only after its message is durable, and each commit
costs PostgreSQL a WAL flush and the pod a round trip. Sends that arrive
while earlier ones are being written wait for the next free slot and then go
together: one call of ``chat_append_messages`` (shard_migrations/0003) takes
every waiting conversation's next ``seq``, inserts the messages and their
``message.created`` outbox rows, and commits them at once. Nothing waits for
a batch to fill: an idle pod writes each send on its own, as soon as it
arrives; batches form only under load.

The batch keeps every guarantee of the one-message statement
(:data:`APPEND_ONE`):

- seq is taken under the conversation row's lock, so it stays gap-free and
  strictly increasing; a batch holds at most one message per conversation
  and locks its rows in id order, so two pods' batches cannot deadlock;
- all or nothing: if PostgreSQL refuses the batch, nothing was written
  and each message is tried again on its own, so one bad send cannot fail the
  others;
- a message the batch did not write (a retried ``client_msg_id`` already
  stored, a resolved or foreign conversation) is tried on its own too, which
  answers exactly as the one-message statement would (the seq, None, or
  the unique violation that identifies a retry).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Literal

import asyncpg
from prometheus_client import Counter, Histogram

from livedesk.platform.postgres import Connection

__all__ = ["APPEND_ONE", "GROUP_COMMITS", "GROUP_COMMIT_SECONDS", "Append", "GroupCommit", "Guard"]

GROUP_COMMITS = Counter(
    "livedesk_chat_group_commits_total",
    "Message appends written by group commit: statements, and messages in them "
    "(their ratio is the mean batch).",
    ["unit"],
)
GROUP_COMMIT_SECONDS = Histogram(
    "livedesk_chat_group_commit_seconds",
    "Wall time of one group commit (a batch, or a message alone), from leaving the queue "
    "to its answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
_STATEMENTS = GROUP_COMMITS.labels("statements")
_MESSAGES = GROUP_COMMITS.labels("messages")

Guard = Literal["visitor", "agent", "admin"]

_APPEND_SQL = """
    WITH c AS (
        UPDATE conversations SET last_seq = last_seq + 1, updated_at = $8
        WHERE id = $1 AND tenant_id = $2 AND status <> 'resolved' AND {guard}
        RETURNING last_seq),
    m AS (
        INSERT INTO messages (conversation_id, seq, id, tenant_id, sender_kind, sender_id,
                              body, client_msg_id, created_at)
        SELECT $1, c.last_seq, $4, $2, $5, $3, $6, $7, $8 FROM c
        RETURNING seq),
    o AS (
        INSERT INTO outbox (event_id, routing_key, body)
        SELECT $9, 'message.created', chat_with_seq($10, m.seq) FROM m)
    SELECT seq FROM m"""
APPEND_ONE: dict[str, str] = {
    "visitor": _APPEND_SQL.format(guard="visitor_id = $3"),
    "agent": _APPEND_SQL.format(guard="agent_id = $3"),
    "admin": _APPEND_SQL.format(guard="$3::uuid IS NOT NULL"),
}
"""One message, by guard: its seq, or NULL when the conversation refuses it."""

# Element i of each array is message i (shard_migrations/0003_group_commit.sql).
_APPEND_MANY = """
    SELECT chat_append_messages($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::uuid[],
                                $6::text[], $7::text[], $8::text[], $9::timestamptz[],
                                $10::uuid[], $11::bytea[])"""


@dataclass(slots=True)
class Append:
    """One message to append (the parameters of :data:`APPEND_ONE`)."""

    conversation_id: uuid.UUID
    tenant_id: uuid.UUID
    sender_id: uuid.UUID
    guard: Guard
    message_id: uuid.UUID
    sender_kind: str
    body: str
    client_msg_id: str | None
    created_at: dt.datetime
    event_id: str
    prefix: bytes

    async def one(self, conn: asyncpg.Pool | Connection) -> int | None:
        """Run the one-message statement: the seq, or None when the conversation refuses."""
        seq: int | None = await conn.fetchval(
            APPEND_ONE[self.guard],
            self.conversation_id,
            self.tenant_id,
            self.sender_id,
            self.message_id,
            self.sender_kind,
            self.body,
            self.client_msg_id,
            self.created_at,
            self.event_id,
            self.prefix,
        )
        return seq


_Waiting = tuple[Append, "asyncio.Future[int | None]"]


class GroupCommit:
    """Appends to one database, written in batches of up to ``max_batch`` messages.

    At most ``slots`` statements are in flight; sends arriving meanwhile queue
    and leave together in the next free slot.
    """

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 100, slots: int = 2) -> None:
        if max_batch < 1 or slots < 1:
            raise ValueError("max_batch and slots must be at least 1")
        self._pool = pool
        self._max_batch = max_batch
        self._slots = slots
        self._queue: deque[_Waiting] = deque()
        self._writers: set[asyncio.Task[None]] = set()
        self._running = 0
        self.statements = 0
        self.messages = 0

    async def append(self, item: Append) -> int | None:
        """The message's seq once committed; None when the conversation refused it.

        Raises what the one-message statement raises (``UniqueViolationError``
        for a retried ``client_msg_id``, connection errors).
        """
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running < self._slots:
            self._running += 1
            writer = asyncio.get_running_loop().create_task(self._write())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await future

    def _take(self) -> list[_Waiting]:
        """The next batch: queue order, one message per conversation, none given up on."""
        batch: list[_Waiting] = []
        later: list[_Waiting] = []
        conversations: set[uuid.UUID] = set()
        queue = self._queue
        while queue and len(batch) < self._max_batch:
            waiting = queue.popleft()
            if waiting[1].done():  # the sender was cancelled: it never gets an ack
                continue
            cid = waiting[0].conversation_id
            if cid in conversations:
                later.append(waiting)  # after this batch, still ahead of its successors
            else:
                conversations.add(cid)
                batch.append(waiting)
        queue.extendleft(reversed(later))
        return batch

    async def _write(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                started = time.perf_counter()
                try:
                    await self._commit(batch)
                    GROUP_COMMIT_SECONDS.observe(time.perf_counter() - started)
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    # Each sender got the error; the writer carries on with the queue.
        finally:
            # Counted down here, with no await after the last look at the queue:
            # an append that finds every slot taken is sure to be picked up.
            self._running -= 1

    async def _commit(self, batch: list[_Waiting]) -> None:
        self.statements += 1
        self.messages += len(batch)
        _STATEMENTS.inc()
        _MESSAGES.inc(len(batch))
        if len(batch) == 1:
            await self._one(batch[0])
            return
        # Locked in conversation id order, as by every other batch: no deadlocks.
        batch.sort(key=lambda waiting: waiting[0].conversation_id)
        items = [item for item, _ in batch]
        try:
            seqs: list[int | None] = await self._pool.fetchval(
                _APPEND_MANY,
                [i.conversation_id for i in items],
                [i.tenant_id for i in items],
                [i.sender_id for i in items],
                [i.guard for i in items],
                [i.message_id for i in items],
                [i.sender_kind for i in items],
                [i.body for i in items],
                [i.client_msg_id for i in items],
                [i.created_at for i in items],
                [i.event_id for i in items],
                [i.prefix for i in items],
            )
        except asyncpg.PostgresError:
            # The server refused the statement: nothing of it was written.
            seqs = [None] * len(batch)
        alone: list[_Waiting] = []
        for waiting, seq in zip(batch, seqs, strict=True):
            if seq is None:
                alone.append(waiting)
            elif not waiting[1].done():
                waiting[1].set_result(seq)
        for waiting in alone:
            await self._one(waiting)

    async def _one(self, waiting: _Waiting) -> None:
        item, future = waiting
        try:
            seq = await item.one(self._pool)
        except asyncpg.PostgresError as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(seq)
