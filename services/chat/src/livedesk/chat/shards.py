"""Where a conversation's data lives: logical shards, the shard map, pools per database.

A conversation id hashes to one of ``logical_shards`` fixed logical shards
(md5 of its 16 bytes, first 60 bits, modulo the count; the SQL function
``chat_logical_shard`` computes the same). The shard map (``CHAT_SHARDS``)
assigns ranges of logical shards to named physical databases, so adding a
database moves whole logical shards and nothing is ever rehashed. See
docs/sharding.md.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from livedesk.platform.postgres import PLATFORM_MIGRATIONS, migrate, open_database

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_LOGICAL_SHARDS",
    "REPLICA_RETRY_AFTER",
    "SHARD_MIGRATIONS",
    "ShardMap",
    "Shards",
    "logical_shard",
    "open_shards",
]

DEFAULT_LOGICAL_SHARDS = 1024
DEFAULT_DATABASE = "main"
REPLICA_RETRY_AFTER = 5.0
"""Seconds a failed read replica stays out of rotation before it is tried again."""
SHARD_MIGRATIONS = "livedesk.chat.shard_migrations"
"""Conversation tables, applied to every shard database (after the platform's outbox)."""


def logical_shard(conversation_id: uuid.UUID, logical_shards: int) -> int:
    """The logical shard of ``conversation_id``: stable across processes and versions."""
    digest = hashlib.md5(conversation_id.bytes, usedforsecurity=False).digest()
    return (int.from_bytes(digest[:8], "big") >> 4) % logical_shards


@dataclass(frozen=True)
class ShardMap:
    """Logical shards → named physical databases (DSNs), plus optional read replicas."""

    databases: Mapping[str, str]
    ranges: tuple[tuple[int, int, str], ...]
    logical_shards: int = DEFAULT_LOGICAL_SHARDS
    replicas: Mapping[str, str] = field(default_factory=dict)
    _owner: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.logical_shards < 1:
            raise ValueError("logical_shards must be at least 1")
        owner: list[str | None] = [None] * self.logical_shards
        for first, last, name in self.ranges:
            if name not in self.databases:
                raise ValueError(f"map names database {name!r}, which is not in databases")
            if not 0 <= first <= last < self.logical_shards:
                raise ValueError(f"range [{first}, {last}] is outside 0..{self.logical_shards - 1}")
            for shard in range(first, last + 1):
                if owner[shard] is not None:
                    raise ValueError(f"logical shard {shard} is mapped twice")
                owner[shard] = name
        missing = [i for i, name in enumerate(owner) if name is None]
        if missing:
            raise ValueError(f"logical shards without a database, e.g. {missing[0]}")
        unknown = set(self.replicas) - set(self.databases)
        if unknown:
            raise ValueError(f"replicas for unknown databases: {sorted(unknown)}")
        object.__setattr__(self, "_owner", tuple(n for n in owner if n is not None))

    @classmethod
    def single(cls, dsn: str, replica: str | None = None) -> ShardMap:
        """Every logical shard on one database (the default configuration)."""
        return cls(
            {DEFAULT_DATABASE: dsn},
            ((0, DEFAULT_LOGICAL_SHARDS - 1, DEFAULT_DATABASE),),
            replicas={DEFAULT_DATABASE: replica} if replica else {},
        )

    @classmethod
    def parse(cls, shards: str, replicas: str, default_dsn: str) -> ShardMap:
        """The map from ``CHAT_SHARDS`` / ``CHAT_READ_REPLICAS`` text (ValueError if bad).

        Empty ``shards``: every logical shard on ``default_dsn`` (database
        ``main``). ``replicas`` is a JSON object: database name → replica DSN.
        """
        replica_map: dict[str, str] = _json_object(replicas, "CHAT_READ_REPLICAS")
        if not shards.strip():
            return cls(
                {DEFAULT_DATABASE: default_dsn},
                ((0, DEFAULT_LOGICAL_SHARDS - 1, DEFAULT_DATABASE),),
                replicas=replica_map,
            )
        spec: dict[str, Any] = _json_object(shards, "CHAT_SHARDS")
        try:
            ranges = tuple((int(a), int(b), str(n)) for a, b, n in spec["map"])
            return cls(
                {str(k): str(v) for k, v in spec["databases"].items()},
                ranges,
                int(spec.get("logical_shards", DEFAULT_LOGICAL_SHARDS)),
                replica_map,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                'CHAT_SHARDS must look like {"databases": {"db0": "postgresql://..."}, '
                f'"logical_shards": 1024, "map": [[0, 1023, "db0"]]}} ({exc!r})'
            ) from None

    def logical_shard(self, conversation_id: uuid.UUID) -> int:
        """The logical shard of ``conversation_id``."""
        return logical_shard(conversation_id, self.logical_shards)

    def database_of(self, conversation_id: uuid.UUID) -> str:
        """The name of the physical database holding ``conversation_id``."""
        return self._owner[self.logical_shard(conversation_id)]

    def owner(self, shard: int) -> str:
        """The database name of logical shard ``shard``."""
        return self._owner[shard]

    def moved(self, shard: int, database: str) -> ShardMap:
        """This map with logical shard ``shard`` assigned to ``database`` (same DSNs)."""
        ranges: list[tuple[int, int, str]] = []
        for first, last, name in self.ranges:
            if first <= shard <= last:
                if first < shard:
                    ranges.append((first, shard - 1, name))
                if shard < last:
                    ranges.append((shard + 1, last, name))
            else:
                ranges.append((first, last, name))
        ranges.append((shard, shard, database))
        return ShardMap(self.databases, tuple(sorted(ranges)), self.logical_shards, self.replicas)

    def to_json(self) -> str:
        """The ``CHAT_SHARDS`` text of this map (replicas not included)."""
        return json.dumps(
            {
                "databases": dict(self.databases),
                "logical_shards": self.logical_shards,
                "map": [list(r) for r in self.ranges],
            }
        )


def _json_object(text: str, variable: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{variable} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{variable} must be a JSON object")
    return value


class Shards:
    """The pools of a shard map: a primary per database, a replica pool where configured.

    Databases with the same DSN share one pool (e.g. the directory database
    also holding shards in the default configuration).
    """

    def __init__(
        self,
        shard_map: ShardMap,
        primaries: Mapping[str, asyncpg.Pool],
        replicas: Mapping[str, asyncpg.Pool] | None = None,
        *,
        replica_retry_after: float = REPLICA_RETRY_AFTER,
    ) -> None:
        self.map = shard_map
        self._primaries = dict(primaries)
        self._replicas = dict(replicas or {})
        self.replica_retry_after = replica_retry_after
        self._replica_down_until: dict[str, float] = {}
        self._replica_lagging: set[str] = set()

    def database_of(self, conversation_id: uuid.UUID) -> str:
        """The database name of ``conversation_id``."""
        return self.map.database_of(conversation_id)

    def primary(self, conversation_id: uuid.UUID) -> asyncpg.Pool:
        """The pool that writes ``conversation_id``."""
        return self._primaries[self.map.database_of(conversation_id)]

    def replica(self, conversation_id: uuid.UUID) -> asyncpg.Pool | None:
        """The replica pool of ``conversation_id``'s database: None if there is none,
        or while it is out of rotation after a failure."""
        database = self.map.database_of(conversation_id)
        if database in self._replica_lagging:
            return None
        if time.monotonic() < self._replica_down_until.get(database, 0.0):
            return None
        return self._replicas.get(database)

    def replica_databases(self) -> list[str]:
        """The databases that have a read replica configured."""
        return list(self._replicas)

    def replica_pool(self, database: str) -> asyncpg.Pool:
        """The replica pool of ``database`` (in rotation or not)."""
        return self._replicas[database]

    def replica_lagging(self, database: str) -> bool:
        """Whether ``database``'s replica is out of rotation for lagging too far."""
        return database in self._replica_lagging

    def set_replica_lagging(self, database: str, lagging: bool) -> None:
        """Take ``database``'s replica out of rotation while it lags (or put it back)."""
        if lagging:
            self._replica_lagging.add(database)
        else:
            self._replica_lagging.discard(database)

    def replica_failed(self, conversation_id: uuid.UUID) -> None:
        """Take the replica of ``conversation_id``'s database out of rotation for a while.

        Reads go to the primary meanwhile; the first read after
        ``replica_retry_after`` seconds tries the replica again.
        """
        database = self.map.database_of(conversation_id)
        self._replica_down_until[database] = time.monotonic() + self.replica_retry_after

    def pool(self, database: str) -> asyncpg.Pool:
        """The primary pool of database ``database``."""
        return self._primaries[database]

    def distinct(self) -> dict[str, asyncpg.Pool]:
        """One (name, pool) per physical database: shared pools appear once."""
        seen: dict[int, str] = {}
        out: dict[str, asyncpg.Pool] = {}
        for name, pool in self._primaries.items():
            if id(pool) not in seen:
                seen[id(pool)] = name
                out[name] = pool
        return out

    def dsns(self) -> list[str]:
        """The DSN of each distinct physical database."""
        return [self.map.databases[name] for name in self.distinct()]

    def group(self, ids: Iterable[uuid.UUID]) -> dict[str, list[uuid.UUID]]:
        """``ids`` grouped by the (distinct) database that holds them."""
        by_pool: dict[int, str] = {id(p): n for n, p in self.distinct().items()}
        out: dict[str, list[uuid.UUID]] = {}
        for cid in ids:
            name = by_pool[id(self.primary(cid))]
            out.setdefault(name, []).append(cid)
        return out

    async def close(self, keep: Iterable[asyncpg.Pool] = ()) -> None:
        """Close every pool but those in ``keep`` (e.g. the directory's)."""
        kept = {id(p) for p in keep}
        closed: set[int] = set()
        for pool in [*self._primaries.values(), *self._replicas.values()]:
            if id(pool) not in kept and id(pool) not in closed:
                closed.add(id(pool))
                await pool.close()


async def open_shards(
    shard_map: ShardMap,
    *,
    directory_dsn: str,
    directory_pool: asyncpg.Pool,
    auto_create: bool = False,
    max_size: int = 10,
) -> Shards:
    """Pools (migrated) for every database of ``shard_map``; the directory's pool is reused."""
    by_dsn: dict[str, asyncpg.Pool] = {directory_dsn: directory_pool}
    primaries: dict[str, asyncpg.Pool] = {}
    replicas: dict[str, asyncpg.Pool] = {}
    try:
        for name, dsn in shard_map.databases.items():
            if dsn not in by_dsn:
                by_dsn[dsn] = await open_database(
                    dsn, [PLATFORM_MIGRATIONS], auto_create=auto_create, max_size=max_size
                )
            primaries[name] = by_dsn[dsn]
        for pool in {id(p): p for p in primaries.values()}.values():
            await migrate_shard(pool)
        for name, dsn in shard_map.replicas.items():
            replicas[name] = await open_database(dsn, [], max_size=max_size)
    except BaseException:
        await Shards(shard_map, primaries, replicas).close(keep=[directory_pool])
        raise
    return Shards(shard_map, primaries, replicas)


async def migrate_shard(pool: asyncpg.Pool) -> None:
    """Apply the platform's and the shard's migrations to a shard database."""
    await migrate(pool, PLATFORM_MIGRATIONS)
    await migrate(pool, SHARD_MIGRATIONS)
