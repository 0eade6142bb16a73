"""Chat benchmark "archive" (make bench-chat): conversations/s moved to the archive.

Seeds a fresh database with C resolved conversations of M ~100-byte messages
each (resolved 40 days ago), then runs the archiver (ARCHIVE_AFTER_DAYS 30,
filesystem store in a temporary directory) once and times it: every batch is
written, read back and verified before its rows are deleted. Reports
conversations/s, messages/s and the compressed bytes per message.

    uv run python services/chat/bench/archive_bench.py --conversations 2000 --messages 20
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from livedesk.chat.archive import Archiver
from livedesk.chat.archive_store import FileObjectStore
from livedesk.chat.shards import ShardMap, Shards, migrate_shard
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "docs" / "benchmarks" / "chat.md"
ADMIN_DSN = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

_SEED = """
WITH c AS (
    INSERT INTO conversations (id, tenant_id, inbox_id, visitor_id, status, last_seq,
                               resolved_at, created_at)
    SELECT gen_random_uuid(), $1, $2, gen_random_uuid(), 'resolved', $3,
           now() - interval '40 days', now() - interval '41 days'
    FROM generate_series(1, $4)
    RETURNING id, visitor_id)
INSERT INTO messages (conversation_id, seq, id, tenant_id, sender_kind, sender_id, body,
                      client_msg_id, created_at)
SELECT c.id, s, gen_random_uuid(), $1, CASE WHEN s % 2 = 1 THEN 'visitor' ELSE 'agent' END,
       c.visitor_id, 'message ' || s || ' ' || md5(c.id::text || s) || ' about order 42',
       'c' || s, now() - interval '41 days' + s * interval '1 second'
FROM c, generate_series(1, $3) s
"""


async def main(args: argparse.Namespace) -> dict[str, float]:
    """Seed, archive once, report."""
    name = f"livedesk_bench_archive_{os.getpid()}"
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    workdir = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    pool = await open_database(dsn, [PLATFORM_MIGRATIONS], auto_create=True, max_size=4)
    try:
        await migrate_shard(pool)
        tenant = uuid.uuid4()
        for start in range(0, args.conversations, 1000):
            count = min(1000, args.conversations - start)
            await pool.execute(_SEED, tenant, uuid.uuid4(), args.messages, count)
        store = FileObjectStore(workdir)
        shards = Shards(ShardMap.single(dsn), {"main": pool})
        archiver = Archiver(shards, store, after=dt.timedelta(days=30), batch_size=args.batch_size)
        started = time.perf_counter()
        report = await archiver.run_once()
        seconds = time.perf_counter() - started
        assert report.conversations == args.conversations, report
        assert not await pool.fetchval("SELECT count(*) FROM messages")
        size = sum(p.stat().st_size for p in workdir.rglob("*.gz"))
        return {
            "conversations": report.conversations,
            "messages": report.messages,
            "objects": report.objects,
            "seconds": round(seconds, 2),
            "conversations_per_s": round(report.conversations / seconds),
            "messages_per_s": round(report.messages / seconds),
            "bytes_per_message": round(size / report.messages, 1),
        }
    finally:
        await pool.close()
        shutil.rmtree(workdir, ignore_errors=True)
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--write", action="store_true", help=f"append results to {RESULTS}")
    args = parser.parse_args()
    r = asyncio.run(main(args))
    table = (
        f"\n### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — archive: `{' '.join(sys.argv)}` "
        f"on {platform.node()} ({os.cpu_count()} cores, shared with other work)\n\n"
        "| conversations | messages each | batch | objects | seconds | conversations/s "
        "| messages/s | stored bytes/message |\n|---|---|---|---|---|---|---|---|\n"
        f"| {r['conversations']:,} | {args.messages} | {args.batch_size} | {r['objects']} "
        f"| {r['seconds']} | {r['conversations_per_s']:,} | {r['messages_per_s']:,} "
        f"| {r['bytes_per_message']} |\n"
    )
    print(table)
    if args.write:
        with RESULTS.open("a") as out:
            out.write(table)
