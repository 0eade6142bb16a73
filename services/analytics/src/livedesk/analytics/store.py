"""The one place that decides where events are stored: a ClickHouse server or chDB.

With ``CLICKHOUSE_URL`` set, clickhouse-connect talks HTTP to that server.
Without it, the same client runs the same SQL on chDB, ClickHouse's engine
inside this process, keeping its data in ``CHDB_PATH``. Either way the rest of
the service sees one small async interface, :class:`Store`.

Every call runs in a dedicated worker thread (a *lane*, with its own client):
neither client is async and the event loop must never wait on them. A store
of one lane keeps its calls strictly serialised, which the ingester's writes
rely on; :meth:`Store.open_readers` opens another store on the same data with
lanes of its own, so reports do not queue behind an INSERT or a refresh
(chDB allows one data directory per process, but several clients on it,
whose queries run concurrently). Library errors are translated to
:class:`~livedesk.analytics.errors.StoreError` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from livedesk.analytics.errors import StoreError
from livedesk.analytics.metrics import STORE_CALLS
from livedesk.platform.errors import DependencyError
from livedesk.platform.logging import get_logger

__all__ = ["Store"]

log = get_logger("livedesk.analytics.store")

T = TypeVar("T")

# What a failed ClickHouse call can raise: the client's own errors, and OS
# errors from the HTTP transport or chDB's temporary insert files.
_LIBRARY_ERRORS = (ClickHouseError, OSError)


@dataclass(slots=True)
class _Lane:
    """One client and the one thread that makes its calls."""

    client: Any
    executor: ThreadPoolExecutor
    calls: int = 0
    """Calls made on this lane and not yet returned."""


class Store:
    """Open ClickHouse clients whose calls run off the event loop, one at a time per lane.

    Use :meth:`open`; close with :meth:`close`.
    """

    def __init__(
        self,
        lanes: Sequence[_Lane],
        target: str,
        *,
        exclusive: bool = False,
        reopen: Callable[[int], Awaitable[Store]] | None = None,
        name: str = "writes",
    ) -> None:
        self._lanes = list(lanes)
        STORE_CALLS.labels(name).set_function(lambda: sum(lane.calls for lane in self._lanes))
        self._closed = False
        self._reopen = reopen
        self.target = target
        """Where the data lives, for logs: ``chdb:<dir>`` or the server URL without password."""
        self.exclusive = exclusive
        """True when no other process can write this data (chDB: one process per directory)."""

    @classmethod
    async def open(
        cls, *, clickhouse_url: str | None, chdb_path: str, lanes: int = 1, name: str = "writes"
    ) -> Store:
        """Connect to the server at ``clickhouse_url``, or start chDB in ``chdb_path``.

        With ``lanes`` above 1, that many clients, each with its own thread: up
        to ``lanes`` calls run at once, each on the lane with the fewest waiting.
        ``name`` labels its calls in ``livedesk_analytics_store_calls``.

        Raises:
            DependencyError: the server did not answer, or chDB could not open its directory
                (another process may hold it: chDB allows one process per directory).
        """
        if lanes < 1:
            raise ValueError("a store needs at least one lane")
        connect: Callable[[], tuple[Any, str]]
        if clickhouse_url:
            target = _redact(clickhouse_url)
            connect = functools.partial(_connect_server, clickhouse_url)
        else:
            target = f"chdb:{chdb_path}"
            connect = functools.partial(_connect_chdb, chdb_path)
        opened: list[_Lane] = []
        try:
            for _ in range(lanes):
                lane, target = await _open_lane(connect, target, hint=not clickhouse_url)
                opened.append(lane)
        except BaseException:
            for lane in opened:
                await _close_lane(lane, target)
            raise
        version = opened[0].client.server_version
        log.info("store_opened", target=target, server_version=version, lanes=lanes)

        async def reopen(n: int) -> Store:
            return await cls.open(
                clickhouse_url=clickhouse_url, chdb_path=chdb_path, lanes=n, name="reads"
            )

        return cls(opened, target, exclusive=not clickhouse_url, reopen=reopen, name=name)

    async def open_readers(self, lanes: int) -> Store:
        """Another store on the same data with ``lanes`` lanes of its own (close it too).

        For reads that must not queue behind this store's calls; writes that
        rely on this store's order stay here.
        """
        if self._reopen is None or self._closed:
            raise StoreError(f"store {self.target} cannot open readers")
        return await self._reopen(lanes)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StoreError(f"store {self.target} is closed")
        lane = min(self._lanes, key=lambda candidate: candidate.calls)
        loop = asyncio.get_running_loop()
        lane.calls += 1
        try:
            return await loop.run_in_executor(
                lane.executor, functools.partial(fn, lane.client, *args, **kwargs)
            )
        except _LIBRARY_ERRORS as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            lane.calls -= 1

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns no rows (DDL, ``OPTIMIZE``, ...)."""
        await self._call(lambda client: client.command(sql, parameters=parameters))

    async def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run a ``SELECT``; its rows as tuples. ``{name:Type}`` binds ``parameters[name]``.

        ``settings`` are ClickHouse query settings (e.g. ``max_execution_time``).
        """

        def run(client: Any) -> list[tuple[Any, ...]]:
            result = client.query(sql, parameters=parameters, settings=settings)
            return [tuple(row) for row in result.result_rows]

        return await self._call(run)

    async def insert(
        self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]
    ) -> None:
        """Insert ``rows`` into ``table`` in one INSERT; it has them when this returns."""
        await self._call(lambda client: client.insert(table, rows, column_names=list(column_names)))

    async def ping(self) -> None:
        """Raise unless the store answers ``SELECT 1``."""
        rows = await self.query("SELECT 1")
        if rows != [(1,)]:
            raise StoreError(f"SELECT 1 answered {rows!r}")

    async def close(self) -> None:
        """Wait for calls already made, close the clients and end their threads."""
        if self._closed:
            return
        self._closed = True
        for lane in self._lanes:
            await _close_lane(lane, self.target)
        log.info("store_closed", target=self.target)


async def _open_lane(
    connect: Callable[[], tuple[Any, str]], target: str, *, hint: bool
) -> tuple[_Lane, str]:
    """A new lane, and the target as its client names it."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics-store")
    loop = asyncio.get_running_loop()
    try:
        client, target = await loop.run_in_executor(executor, connect)
    except (*_LIBRARY_ERRORS, ImportError) as exc:
        executor.shutdown(wait=False)
        why = " (is another process using this data directory?)" if hint else ""
        raise DependencyError(f"ClickHouse at {target} unavailable{why}: {exc}") from exc
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return _Lane(client, executor), target


async def _close_lane(lane: _Lane, target: str) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(lane.executor, lane.client.close)
    except _LIBRARY_ERRORS as exc:
        log.warning("store_close_failed", target=target, error=repr(exc))
    finally:
        # Calls are queued in order, so nothing is left once close has run.
        lane.executor.shutdown(wait=False)


def _connect_server(url: str) -> tuple[Any, str]:
    # One thread makes every call of a client, so no HTTP session id is needed
    # (and one would make concurrent callers fail with "session is locked").
    client = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
    return client, _redact(url)


def _connect_chdb(chdb_path: str) -> tuple[Any, str]:
    path = Path(chdb_path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    # path= rather than a chdb:/// DSN: the DSN form does not unquote, so a
    # directory name with '%', '?' or '#' would be misread.
    client = clickhouse_connect.get_client(interface="chdb", path=str(path))
    return client, f"chdb:{path}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
