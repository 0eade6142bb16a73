"""Routing of conversations to logical shards and databases (no servers)."""

from __future__ import annotations

import collections
import uuid

import pytest

from livedesk.chat.shards import ShardMap, logical_shard
from livedesk.platform.ids import uuid7


def test_logical_shard_is_stable_across_processes_and_versions() -> None:
    # Pinned values: changing the hash would move every conversation.
    assert logical_shard(uuid.UUID("0190a5b2-7c3e-7d4e-8f00-123456789abc"), 1024) == 499
    assert logical_shard(uuid.UUID(int=0), 1024) == logical_shard(uuid.UUID(int=0), 1024)


def test_uuid7_conversations_spread_evenly_over_logical_shards_and_databases() -> None:
    ids = [uuid7() for _ in range(64_000)]  # made in the same few milliseconds
    per_shard = collections.Counter(logical_shard(i, 64) for i in ids)
    assert len(per_shard) == 64
    assert max(per_shard.values()) < 1.15 * 1000
    assert min(per_shard.values()) > 0.85 * 1000
    two = ShardMap({"a": "x", "b": "y"}, ((0, 511, "a"), (512, 1023, "b")))
    per_db = collections.Counter(two.database_of(i) for i in ids)
    assert abs(per_db["a"] - per_db["b"]) < 0.03 * len(ids)


def test_default_map_puts_every_shard_on_database_url() -> None:
    shard_map = ShardMap.parse("", "", "postgresql://h/db")
    assert {shard_map.owner(s) for s in range(1024)} == {"main"}
    assert shard_map.databases == {"main": "postgresql://h/db"}


def test_moving_a_shard_changes_only_that_shard() -> None:
    before = ShardMap({"a": "x", "b": "y"}, ((0, 1023, "a"),))
    after = ShardMap.parse(before.moved(17, "b").to_json(), "", "unused")
    assert [s for s in range(1024) if before.owner(s) != after.owner(s)] == [17]


@pytest.mark.parametrize(
    "spec",
    [
        '{"databases": {"a": "x"}, "logical_shards": 4, "map": [[0, 2, "a"]]}',
        '{"databases": {"a": "x"}, "logical_shards": 4, "map": [[0, 3, "b"]]}',
        '{"databases": {"a": "x"}, "logical_shards": 4, "map": [[0, 3, "a"], [3, 3, "a"]]}',
        '{"databases": {"a": "x"}}',
        "not json",
    ],
)
def test_bad_shard_maps_fail_fast(spec: str) -> None:
    with pytest.raises(ValueError, match=r"CHAT_SHARDS|shard|database"):
        ShardMap.parse(spec, "", "unused")


def test_a_fenced_write_is_a_retryable_503() -> None:
    import asyncpg

    from livedesk.chat.errors import Unavailable, from_database

    error = from_database(asyncpg.ObjectNotInPrerequisiteStateError("shard is moving"))
    assert isinstance(error, Unavailable)
    assert error.status == 503
    assert from_database(asyncpg.UniqueViolationError("dup")) is None
