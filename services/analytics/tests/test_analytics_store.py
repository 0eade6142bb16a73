"""Store: the one ClickHouse/chDB client, on a real chDB engine in a temporary directory."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY

from livedesk.analytics.errors import StoreError
from livedesk.analytics.store import Store
from livedesk.platform.errors import DependencyError

if TYPE_CHECKING:
    from pathlib import Path


async def test_chdb_store_answers_and_binds_parameters(store: Store, tmp_path: Path) -> None:
    await store.ping()
    assert store.target == f"chdb:{(tmp_path / 'chdb').resolve()}"
    rows = await store.query("SELECT {n:UInt32} + 1, {s:String}", parameters={"n": 41, "s": "x"})
    assert rows == [(42, "x")]


async def test_insert_is_readable_and_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    store = await Store.open(clickhouse_url=None, chdb_path=path)
    try:
        await store.command("CREATE TABLE t (id UInt32, at DateTime64(3, 'UTC')) ENGINE = Log")
        at = dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
        await store.insert("t", [(1, at), (2, at)], ("id", "at"))
    finally:
        await store.close()

    reopened = await Store.open(clickhouse_url=None, chdb_path=path)
    try:
        rows = await reopened.query("SELECT id, toUnixTimestamp64Milli(at) FROM t ORDER BY id")
    finally:
        await reopened.close()
    assert rows == [(1, int(at.timestamp() * 1000)), (2, int(at.timestamp() * 1000))]


async def test_calls_run_off_the_event_loop(store: Store) -> None:
    slow = asyncio.create_task(store.query("SELECT sleepEachRow(0.1) FROM numbers(5)"))
    loop_ran = asyncio.Event()
    asyncio.get_running_loop().call_soon(loop_ran.set)
    await loop_ran.wait()
    # Had the query run on the loop, it would have finished before the loop ran again.
    assert not slow.done()
    assert len(await slow) == 5
    workers = [t for t in threading.enumerate() if t.name.startswith("analytics-store")]
    assert len(workers) == 1


async def test_bad_sql_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="no_such_table"):
        await store.query("SELECT * FROM no_such_table")


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = await Store.open(clickhouse_url=None, chdb_path=str(tmp_path / "chdb"))
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.ping()


async def test_a_second_chdb_directory_in_one_process_is_refused(
    store: Store, tmp_path: Path
) -> None:
    with pytest.raises(DependencyError, match="another process"):
        await Store.open(clickhouse_url=None, chdb_path=str(tmp_path / "other"))
    await store.ping()  # the first one is unharmed


async def test_unreachable_server_is_a_dependency_error_without_the_password() -> None:
    with pytest.raises(DependencyError) as caught:
        await Store.open(clickhouse_url="http://app:s3cret@127.0.0.1:1/db", chdb_path="unused")
    assert "app:***@127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_readers_answer_while_the_store_is_busy(store: Store) -> None:
    release = threading.Event()
    held = asyncio.ensure_future(store._call(lambda _client: release.wait(30)))
    readers = await store.open_readers(1)
    try:
        assert await readers.query("SELECT 1") == [(1,)]
        waiting = asyncio.ensure_future(store.query("SELECT 2"))
        assert await readers.query("SELECT 3") == [(3,)]
        assert not held.done()
        assert not waiting.done()  # the store's own calls stay in order behind the held one
        assert _calls("writes") == 2
        assert _calls("reads") == 0
    finally:
        release.set()
        await readers.close()
    assert await held is True
    assert await waiting == [(2,)]
    with pytest.raises(StoreError, match="closed"):
        await readers.ping()


async def test_a_store_of_two_lanes_runs_two_calls_at_once(tmp_path: Path) -> None:
    store = await Store.open(clickhouse_url=None, chdb_path=str(tmp_path / "chdb"), lanes=2)
    release = threading.Event()
    try:
        held = asyncio.ensure_future(store._call(lambda _client: release.wait(30)))
        assert await store.query("SELECT 1") == [(1,)]  # on the other lane
        workers = [t for t in threading.enumerate() if t.name.startswith("analytics-store")]
        assert len(workers) == 2
        assert not held.done()
    finally:
        release.set()
    assert await held is True
    await store.close()
    with pytest.raises(ValueError, match="lane"):
        await Store.open(clickhouse_url=None, chdb_path=str(tmp_path / "chdb"), lanes=0)


def _calls(store: str) -> float | None:
    return REGISTRY.get_sample_value("livedesk_analytics_store_calls", {"store": store})
