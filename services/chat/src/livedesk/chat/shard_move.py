"""Move one logical shard to another database: copy, fence, copy, verify, switch, purge.

The procedure (docs/sharding.md) with the database names of ``CHAT_SHARDS``::

    python -m livedesk.chat.shard_move copy   --shard 17 --from db0 --to db1  # live, repeatable
    python -m livedesk.chat.shard_move fence  --shard 17 --from db0           # 17 read-only
    python -m livedesk.chat.shard_move copy   --shard 17 --from db0 --to db1  # the last changes
    python -m livedesk.chat.shard_move verify --shard 17 --from db0 --to db1  # 1 if different
    python -m livedesk.chat.shard_move plan   --shard 17 --to db1           # new CHAT_SHARDS
    #   roll the chat pods with the new CHAT_SHARDS; then, on the old database:
    python -m livedesk.chat.shard_move purge  --shard 17 --from db0           # delete, unfence

Messages are immutable and carry their seq, so copying keeps every message
and seq; conversations (with ``last_seq``) are copied last-writer-wins, which
is exact once the shard is fenced. Outbox rows stay where they were written:
the old database's relay publishes them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence

import asyncpg

from livedesk.chat.settings import ChatSettings
from livedesk.chat.shards import migrate_shard
from livedesk.platform.postgres import Connection, create_pool
from livedesk.platform.settings import load_settings

__all__ = ["DEFAULT_BATCH", "copy_shard", "fence", "main", "purge", "unfence", "verify"]

# (table, conflict target, update on conflict); conversations first, so the
# rows that reference a conversation never arrive before it.
_TABLES = (
    ("conversations", "(id)", True),
    ("messages", "(conversation_id, seq)", False),
    ("read_state", "(conversation_id, participant_id)", True),
    ("csat", "(conversation_id)", False),
)
_FENCED = ("conversations", "messages", "read_state", "csat")

DEFAULT_BATCH = 500
"""Conversations per copy round: bounds memory and transaction size on large shards."""


async def copy_shard(
    source: asyncpg.Pool,
    target: asyncpg.Pool,
    shard: int,
    logical_shards: int,
    *,
    batch: int = DEFAULT_BATCH,
) -> dict[str, int]:
    """Copy the shard's rows from ``source`` to ``target``; rows copied per table.

    Idempotent and repeatable: messages are inserted if missing, conversation
    and read-state rows overwritten with the source's. Works through the
    shard's conversations in id order, ``batch`` at a time (each batch with
    its messages, read state and CSAT, in one target transaction), so a shard
    of any size is copied in bounded memory and a failed copy resumes by
    simply running it again.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    await migrate_shard(target)
    copied = dict.fromkeys((table for table, _, _ in _TABLES), 0)
    after = uuid.UUID(int=0)
    while True:
        ids: list[uuid.UUID] = [
            r["id"]
            for r in await source.fetch(
                """SELECT id FROM conversations
                   WHERE chat_logical_shard(id, $2) = $1 AND id > $3
                   ORDER BY id LIMIT $4""",
                shard,
                logical_shards,
                after,
                batch,
            )
        ]
        if not ids:
            return copied
        async with target.acquire() as conn, conn.transaction():
            for table, conflict, update in _TABLES:
                column = "id" if table == "conversations" else "conversation_id"
                rows = await source.fetch(
                    f"SELECT * FROM {table} WHERE {column} = ANY($1::uuid[])", ids
                )
                copied[table] += len(rows)
                if rows:
                    await _upsert(conn, table, conflict, update, rows)
        after = ids[-1]


async def _upsert(
    conn: Connection,
    table: str,
    conflict: str,
    update: bool,
    rows: list[asyncpg.Record],
) -> None:
    columns = list(rows[0].keys())
    values = ", ".join(f"${i + 1}" for i in range(len(columns)))
    action = (
        "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
        if update
        else "DO NOTHING"
    )
    await conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "
        f"ON CONFLICT {conflict} {action}",
        [tuple(r.values()) for r in rows],
    )


async def fence(source: asyncpg.Pool, shard: int, logical_shards: int) -> None:
    """Refuse writes to the shard's conversations on ``source`` (until :func:`unfence`)."""
    async with source.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO chat_fenced_shards VALUES ($1, $2) ON CONFLICT DO NOTHING",
            shard,
            logical_shards,
        )
        for table in _FENCED:
            column = "id" if table == "conversations" else "conversation_id"
            await conn.execute(f"DROP TRIGGER IF EXISTS chat_shard_fence ON {table}")
            await conn.execute(
                f"CREATE TRIGGER chat_shard_fence BEFORE INSERT OR UPDATE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION chat_shard_fence('{column}')"
            )


async def unfence(source: asyncpg.Pool, shard: int) -> None:
    """Lift the shard's fence; the triggers go when no shard is fenced."""
    async with source.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM chat_fenced_shards WHERE logical_shard = $1", shard)
        if not await conn.fetchval("SELECT count(*) FROM chat_fenced_shards"):
            for table in _FENCED:
                await conn.execute(f"DROP TRIGGER IF EXISTS chat_shard_fence ON {table}")


_DIGEST = """
    SELECT c.id, c.last_seq, c.status, c.index_version,
           (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages,
           (SELECT md5(string_agg(m.id::text || ':' || m.seq || ':' || md5(m.body), ','
                                  ORDER BY m.seq))
            FROM messages m WHERE m.conversation_id = c.id) AS digest,
           (SELECT string_agg(r.participant_id::text || ':' || r.last_read_seq, ','
                              ORDER BY r.participant_id)
            FROM read_state r WHERE r.conversation_id = c.id) AS reads,
           (SELECT rating FROM csat s WHERE s.conversation_id = c.id) AS rating
    FROM conversations c WHERE chat_logical_shard(c.id, $2) = $1 ORDER BY c.id"""


async def verify(
    source: asyncpg.Pool, target: asyncpg.Pool, shard: int, logical_shards: int
) -> list[str]:
    """Differences between the shard's data on ``source`` and ``target`` (empty: equal)."""
    have = {r["id"]: dict(r) for r in await source.fetch(_DIGEST, shard, logical_shards)}
    got = {r["id"]: dict(r) for r in await target.fetch(_DIGEST, shard, logical_shards)}
    problems = [f"{cid}: missing on target" for cid in have.keys() - got.keys()]
    problems += [f"{cid}: only on target" for cid in got.keys() - have.keys()]
    for cid in have.keys() & got.keys():
        if have[cid] != got[cid]:
            problems.append(f"{cid}: source {have[cid]} != target {got[cid]}")
    return sorted(problems)


async def purge(source: asyncpg.Pool, shard: int, logical_shards: int) -> int:
    """Delete the moved shard's rows from the old database and lift its fence."""
    async with source.acquire() as conn, conn.transaction():
        for table in ("messages", "read_state", "csat"):
            await conn.execute(
                f"DELETE FROM {table} WHERE chat_logical_shard(conversation_id, $2) = $1",
                shard,
                logical_shards,
            )
        await conn.execute(
            "DELETE FROM conversation_index_queue "
            "WHERE chat_logical_shard(conversation_id, $2) = $1",
            shard,
            logical_shards,
        )
        deleted: str = await conn.execute(
            "DELETE FROM conversations WHERE chat_logical_shard(id, $2) = $1",
            shard,
            logical_shards,
        )
    await unfence(source, shard)
    return int(deleted.split()[-1])


async def _run(args: argparse.Namespace) -> int:
    shard_map = load_settings(ChatSettings).shard_map()
    n, shard = shard_map.logical_shards, args.shard
    if args.command == "plan":
        print(shard_map.moved(shard, args.to).to_json())
        return 0
    source = await create_pool(shard_map.databases[args.source], max_size=2)
    target = await create_pool(shard_map.databases[args.to], max_size=2) if args.to else None
    try:
        if args.command == "copy" and target is not None:
            print(await copy_shard(source, target, shard, n, batch=args.batch))
        elif args.command == "fence":
            await fence(source, shard, n)
        elif args.command == "unfence":
            await unfence(source, shard)
        elif args.command == "verify" and target is not None:
            problems = await verify(source, target, shard, n)
            print("\n".join(problems) or "shard identical on both databases")
            return 1 if problems else 0
        elif args.command == "purge":
            print(f"deleted {await purge(source, shard, n)} conversations")
        else:
            print("copy and verify need --to", file=sys.stderr)
            return 2
    finally:
        await source.close()
        if target is not None:
            await target.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m livedesk.chat.shard_move")
    parser.add_argument("command", choices=["copy", "fence", "unfence", "verify", "plan", "purge"])
    parser.add_argument("--shard", type=int, required=True, help="the logical shard")
    parser.add_argument("--from", dest="source", help="database name (CHAT_SHARDS) it is on")
    parser.add_argument("--to", help="database name (CHAT_SHARDS) it goes to")
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="conversations per copy round"
    )
    return asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
