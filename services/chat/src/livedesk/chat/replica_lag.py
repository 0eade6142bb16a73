"""Replica lag: measured per database, exported, and too much of it leaves the rotation.

Correctness never depends on this: a read that needs a seq the replica has
not replayed falls back to the primary (read-your-writes, docs/sharding.md).
But a replica minutes behind would send nearly every read to that fallback
(two queries instead of one) and serve stale listings; so one that lags more
than ``max_lag`` seconds is taken out of rotation until it is back under.

Lag is WAL the replica has received or not, in bytes (primary's current LSN
minus the replica's replay LSN) and in seconds (age of the last replayed
commit while bytes are outstanding; 0 when nothing is outstanding, so an idle
primary does not look like a lagging replica).
"""

from __future__ import annotations

import asyncio

import asyncpg
from prometheus_client import Gauge

from livedesk.chat.shards import Shards
from livedesk.platform.logging import get_logger
from livedesk.platform.tasks import cancel_and_wait

__all__ = ["REPLICA_LAG_BYTES", "REPLICA_LAG_SECONDS", "ReplicaLagMonitor"]

log = get_logger("livedesk.chat.replica_lag")

REPLICA_LAG_SECONDS = Gauge(
    "livedesk_chat_replica_lag_seconds",
    "How far a shard database's read replica is behind its primary, in seconds "
    "(-1: the replica did not answer).",
    ["database"],
)
REPLICA_LAG_BYTES = Gauge(
    "livedesk_chat_replica_lag_bytes",
    "WAL bytes a shard database's read replica has not replayed yet.",
    ["database"],
)

_REPLICA_STATE = """
SELECT pg_is_in_recovery() AS standby,
       pg_last_wal_replay_lsn()::text AS replayed,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) AS age
"""


class ReplicaLagMonitor:
    """Measures each replica every ``interval`` seconds; rotates out those over ``max_lag``."""

    def __init__(self, shards: Shards, *, max_lag: float, interval: float = 1.0) -> None:
        self.shards = shards
        self.max_lag = max_lag
        self.interval = interval
        self.lag: dict[str, float | None] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Measure in the background until :meth:`stop`."""
        if self.shards.replica_databases() and self._task is None:
            self._task = asyncio.create_task(self._run(), name="replica-lag")

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def check_once(self) -> dict[str, float | None]:
        """Measure every replica now; seconds of lag per database (None: unknown/down)."""
        for database in self.shards.replica_databases():
            lag = await self._measure(database)
            self.lag[database] = lag
            REPLICA_LAG_SECONDS.labels(database).set(-1 if lag is None else lag)
            lagging = lag is not None and lag > self.max_lag
            if lagging != self.shards.replica_lagging(database):
                log.warning(
                    "replica_out_of_rotation" if lagging else "replica_back_in_rotation",
                    database=database,
                    lag_seconds=lag,
                    max_lag=self.max_lag,
                )
            self.shards.set_replica_lagging(database, lagging)
        return dict(self.lag)

    async def _measure(self, database: str) -> float | None:
        replica = self.shards.replica_pool(database)
        primary = self.shards.pool(database)
        try:
            state = await replica.fetchrow(_REPLICA_STATE, timeout=5)
            if state is None or not state["standby"] or state["replayed"] is None:
                # Not a streaming standby (e.g. a logical copy): lag is not ours to judge.
                return None
            behind = await primary.fetchval(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)",
                state["replayed"],
                timeout=5,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # A dead replica: reads already take it out when they fail; say so here too.
            log.warning("replica_lag_unknown", database=database, error=repr(exc))
            return None
        behind = max(0.0, float(behind or 0))
        REPLICA_LAG_BYTES.labels(database).set(behind)
        if behind == 0:
            return 0.0
        return max(0.0, float(state["age"] or 0.0))

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval)
