"""The one place that decides where events are stored: a ClickHouse server or chDB.

With ``CLICKHOUSE_URL`` set, clickhouse-connect talks HTTP to that server.
Without it, the same client runs the same SQL on chDB, ClickHouse's engine
inside this process, keeping its data in ``CHDB_PATH``. Either way the rest of
the service sees one small async interface, :class:`Store`.

Every call runs in one dedicated worker thread: neither client is async, the
event loop must never wait on them, and chDB allows a single engine (one data
directory) per process, which one thread also keeps strictly serialised.
Library errors are translated to :class:`~livedesk.analytics.errors.StoreError`
here and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from livedesk.analytics.errors import StoreError
from livedesk.platform.errors import DependencyError
from livedesk.platform.logging import get_logger

__all__ = ["Store"]

log = get_logger("livedesk.analytics.store")

T = TypeVar("T")

# What a failed ClickHouse call can raise: the client's own errors, and OS
# errors from the HTTP transport or chDB's temporary insert files.
_LIBRARY_ERRORS = (ClickHouseError, OSError)


class Store:
    """An open ClickHouse client whose calls run, one at a time, off the event loop.

    Use :meth:`open`; close with :meth:`close`.
    """

    def __init__(
        self, client: Any, executor: ThreadPoolExecutor, target: str, *, exclusive: bool = False
    ) -> None:
        self._client = client
        self._executor = executor
        self._closed = False
        self.target = target
        """Where the data lives, for logs: ``chdb:<dir>`` or the server URL without password."""
        self.exclusive = exclusive
        """True when no other process can write this data (chDB: one process per directory)."""

    @classmethod
    async def open(cls, *, clickhouse_url: str | None, chdb_path: str) -> Store:
        """Connect to the server at ``clickhouse_url``, or start chDB in ``chdb_path``.

        Raises:
            DependencyError: the server did not answer, or chDB could not open its directory
                (another process may hold it: chDB allows one process per directory).
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics-store")
        loop = asyncio.get_running_loop()
        connect: Callable[[], tuple[Any, str]]
        if clickhouse_url:
            target = _redact(clickhouse_url)
            connect = functools.partial(_connect_server, clickhouse_url)
        else:
            target = f"chdb:{chdb_path}"
            connect = functools.partial(_connect_chdb, chdb_path)
        try:
            client, target = await loop.run_in_executor(executor, connect)
        except (*_LIBRARY_ERRORS, ImportError) as exc:
            executor.shutdown(wait=False)
            hint = "" if clickhouse_url else " (is another process using this data directory?)"
            raise DependencyError(f"ClickHouse at {target} unavailable{hint}: {exc}") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        log.info("store_opened", target=target, server_version=client.server_version)
        return cls(client, executor, target, exclusive=not clickhouse_url)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StoreError(f"store {self.target} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except _LIBRARY_ERRORS as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns no rows (DDL, ``OPTIMIZE``, ...)."""
        await self._call(self._client.command, sql, parameters=parameters)

    async def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run a ``SELECT``; its rows as tuples. ``{name:Type}`` binds ``parameters[name]``.

        ``settings`` are ClickHouse query settings (e.g. ``max_execution_time``).
        """

        def run() -> list[tuple[Any, ...]]:
            result = self._client.query(sql, parameters=parameters, settings=settings)
            return [tuple(row) for row in result.result_rows]

        return await self._call(run)

    async def insert(
        self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]
    ) -> None:
        """Insert ``rows`` into ``table`` in one INSERT; it has them when this returns."""
        await self._call(self._client.insert, table, rows, column_names=list(column_names))

    async def ping(self) -> None:
        """Raise unless the store answers ``SELECT 1``."""
        rows = await self.query("SELECT 1")
        if rows != [(1,)]:
            raise StoreError(f"SELECT 1 answered {rows!r}")

    async def close(self) -> None:
        """Wait for calls already made, close the client and end the worker thread."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._client.close)
        except _LIBRARY_ERRORS as exc:
            log.warning("store_close_failed", target=self.target, error=repr(exc))
        finally:
            # Calls are queued in order, so nothing is left once close has run.
            self._executor.shutdown(wait=False)
        log.info("store_closed", target=self.target)


def _connect_server(url: str) -> tuple[Any, str]:
    # One thread makes every call, so no HTTP session id is needed (and one
    # would make concurrent callers fail with "session is locked").
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
