"""Schema migrations on a real chDB engine: applied once, in order, idempotent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from livedesk.analytics.errors import MigrationError
from livedesk.analytics.schema import (
    MIGRATIONS,
    Migration,
    applied_versions,
    migrate,
    render,
    split_statements,
)
from livedesk.analytics.store import Store

if TYPE_CHECKING:
    from pathlib import Path


def test_migration_files_load_in_version_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    first = MIGRATIONS[0]
    assert (first.version, first.name) == (1, "events")
    assert len(first.statements) == 2
    assert first.statements[0].startswith("-- Every event")
    assert "ReplacingMergeTree(ingested_at)" in first.statements[0]
    assert first.statements[1].startswith("-- cluster only")


def test_render_targets_one_node_or_a_cluster() -> None:
    table, distributed = MIGRATIONS[0].statements
    assert render(distributed) is None
    single = render(table)
    assert single is not None
    assert "CREATE TABLE IF NOT EXISTS events \n" in single.replace("events  \n", "events \n")
    assert "ENGINE = ReplacingMergeTree(ingested_at)" in single
    clustered = render(table, "main")
    assert clustered is not None
    assert "CREATE TABLE IF NOT EXISTS events_local ON CLUSTER `main`" in clustered
    assert "ENGINE = ReplicatedReplacingMergeTree(ingested_at)" in clustered
    dist = render(distributed, "main")
    assert dist is not None
    assert "Distributed('main', currentDatabase(), events_local" in dist
    with pytest.raises(MigrationError):
        render(table, "x`; DROP")


def test_split_statements_drops_comment_only_chunks_and_terminators() -> None:
    sql = "-- header\nCREATE TABLE a (x UInt8) ENGINE = Log;\n\n-- note\nSELECT 1;  \n-- trailer\n"
    assert split_statements(sql) == (
        "-- header\nCREATE TABLE a (x UInt8) ENGINE = Log",
        "-- note\nSELECT 1",
    )


async def test_migrations_apply_once(store: Store) -> None:
    assert await migrate(store) == [m.version for m in MIGRATIONS]
    assert await migrate(store) == []
    rows = await store.query("SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows == [(m.version, m.name) for m in MIGRATIONS]


async def test_events_table_collapses_duplicates_by_event_id(store: Store) -> None:
    await migrate(store)
    rows = await store.query(
        "SELECT engine, partition_key, sorting_key FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'events'"
    )
    assert rows == [("ReplacingMergeTree", "toYYYYMM(occurred_at)", "tenant_id, type, event_id")]
    columns = await store.query(
        "SELECT name, type FROM system.columns "
        "WHERE database = currentDatabase() AND table = 'events' ORDER BY position"
    )
    assert columns == [
        ("event_id", "UUID"),
        ("type", "LowCardinality(String)"),
        ("tenant_id", "String"),
        ("conversation_id", "String"),
        ("producer", "LowCardinality(String)"),
        ("occurred_at", "DateTime64(3, 'UTC')"),
        ("trace_id", "String"),
        ("payload", "String"),
        ("ingested_at", "DateTime64(3, 'UTC')"),
    ]


async def test_migrations_stay_applied_after_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    store = await Store.open(clickhouse_url=None, chdb_path=path)
    try:
        await migrate(store)
    finally:
        await store.close()
    store = await Store.open(clickhouse_url=None, chdb_path=path)
    try:
        assert await migrate(store) == []
    finally:
        await store.close()


async def test_new_migrations_apply_in_order_after_old_ones(store: Store) -> None:
    await migrate(store)
    later = (
        *MIGRATIONS,
        Migration(
            len(MIGRATIONS) + 1, "a", ("CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Log",)
        ),
        Migration(
            len(MIGRATIONS) + 2, "b", ("CREATE TABLE IF NOT EXISTS b (x UInt8) ENGINE = Log",)
        ),
    )
    assert await migrate(store, later) == [len(MIGRATIONS) + 1, len(MIGRATIONS) + 2]
    assert await applied_versions(store) == {m.version for m in later}


async def test_a_database_ahead_of_the_code_is_used_as_is(store: Store) -> None:
    ahead = (*MIGRATIONS, Migration(99, "future", ("SELECT 1",)))
    await migrate(store, ahead)
    assert await migrate(store) == []
