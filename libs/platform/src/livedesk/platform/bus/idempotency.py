"""Run a handler once per event_id, atomically with what it writes to PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import asyncpg

from livedesk.platform.bus.consumer import DUPLICATE, Handler
from livedesk.platform.bus.envelope import Envelope
from livedesk.platform.postgres import Connection

__all__ = ["PgIdempotency", "TxHandler"]

TxHandler = Callable[[Envelope, Connection], Awaitable[None]]
"""A handler that writes through the given connection, inside the idempotency transaction."""


class PgIdempotency:
    """Records handled event ids per consumer in ``processed_events``.

    The record and the handler's writes share one transaction: if the handler
    fails, neither is kept and a redelivery runs it again; if it succeeds, a
    redelivery finds the record and is skipped. Exactly-once effects on top of
    at-least-once delivery.
    """

    def __init__(self, pool: asyncpg.Pool, consumer: str) -> None:
        self._pool = pool
        self._consumer = consumer

    def wrap(self, handler: TxHandler) -> Handler:
        """``handler`` as a bus Handler that runs at most once per event_id."""

        async def handle(env: Envelope) -> object:
            async with self._pool.acquire() as conn, conn.transaction():
                first = await conn.fetchval(
                    """INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)
                       ON CONFLICT DO NOTHING RETURNING true""",
                    self._consumer,
                    env.event_id,
                )
                if not first:
                    return DUPLICATE
                await handler(env, conn)
            return None

        return handle

    async def prune(self, older_than: dt.timedelta) -> int:
        """Forget records older than the broker could still redeliver; rows deleted."""
        status: str = await self._pool.execute(
            """DELETE FROM processed_events
               WHERE consumer = $1 AND processed_at < now() - $2::interval""",
            self._consumer,
            older_than,
        )
        return int(status.split()[-1])
