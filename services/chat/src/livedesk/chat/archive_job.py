"""``python -m livedesk.chat archive [--loop]``: the cold-data job.

One run finishes pending visitor erasures, deletes what outlived its tenant's
retention period, then archives conversations resolved longer ago than
``ARCHIVE_AFTER_DAYS``. ``--loop`` repeats every ``ARCHIVE_INTERVAL`` seconds
until SIGTERM. Safe to run on several hosts: each shard database is archived
by one process at a time (advisory lock), and erasure and retention are
idempotent. Prints (once) or logs (loop) what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator

from livedesk.chat.archive import Archiver
from livedesk.chat.conversations import ConversationStore
from livedesk.chat.erasure import Eraser
from livedesk.chat.settings import ChatSettings
from livedesk.chat.shards import open_shards
from livedesk.platform.logging import configure_logging, get_logger
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.runtime import Shutdown, run_service
from livedesk.platform.settings import load_settings

__all__ = ["archive_pass", "main"]

log = get_logger("livedesk.chat.archive_job")


async def archive_pass(archiver: Archiver, eraser: Eraser, batch_size: int) -> dict[str, object]:
    """Erasures, then retention, then archiving; what was done."""
    erasures = await eraser.run_pending()
    purged = await eraser.purge_expired(batch_size=batch_size)
    archived = await archiver.run_once()
    return {
        "erasures": erasures,
        "purged": dataclasses.asdict(purged),
        "archived": dataclasses.asdict(archived),
    }


@contextlib.asynccontextmanager
async def _job(settings: ChatSettings) -> AsyncIterator[tuple[Archiver, Eraser]]:
    pool = await open_database(
        settings.database_url,
        [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"],
        auto_create=settings.db_auto_create,
        max_size=4,
    )
    try:
        shards = await open_shards(
            settings.shard_map(),
            directory_dsn=settings.database_url,
            directory_pool=pool,
            auto_create=settings.db_auto_create,
            max_size=4,
        )
        store = settings.open_archive_store()
        try:
            archiver = Archiver(
                shards,
                store,
                after=dt.timedelta(days=settings.archive_after_days),
                batch_size=settings.archive_batch_size,
            )
            yield archiver, Eraser(pool, ConversationStore(pool, shards), store)
        finally:
            await store.aclose()
            await shards.close(keep=[pool])
    finally:
        await pool.close()


async def _once(settings: ChatSettings) -> dict[str, object]:
    async with _job(settings) as (archiver, eraser):
        return await archive_pass(archiver, eraser, settings.archive_batch_size)


async def _loop(shutdown: Shutdown) -> None:
    settings = load_settings(ChatSettings)
    configure_logging("chat-archiver", settings.log_level, settings.log_format)
    async with _job(settings) as (archiver, eraser):
        while not shutdown.requested:
            try:
                log.info(
                    "archive_pass",
                    **await archive_pass(archiver, eraser, settings.archive_batch_size),
                )
            except Exception as exc:  # the next pass retries
                log.error("archive_pass_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shutdown.wait(), settings.archive_interval)


def main(argv: list[str]) -> int:
    """Entry point of ``python -m livedesk.chat archive``."""
    parser = argparse.ArgumentParser(prog="python -m livedesk.chat archive")
    parser.add_argument(
        "--loop", action="store_true", help="repeat every ARCHIVE_INTERVAL s until SIGTERM"
    )
    args = parser.parse_args(argv)
    if args.loop:
        return run_service(_loop, "chat-archiver")
    settings = load_settings(ChatSettings)
    configure_logging("chat-archiver", settings.log_level, settings.log_format)
    print(json.dumps(asyncio.run(_once(settings)), indent=2))
    return 0
