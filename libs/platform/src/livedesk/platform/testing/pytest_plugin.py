"""pytest fixtures for real servers, loaded in every package through the ``pytest11`` entry point.

Each test gets its own exchange, queue names and database, and they are
removed afterwards, so tests never see each other's events or rows and the
shared servers are left as they were found.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from livedesk.platform.bus.connection import connect
from livedesk.platform.ids import uuid7
from livedesk.platform.testing.servers import Servers, find_servers

__all__ = [
    "BusNames",
    "amqp_connection",
    "bus_names",
    "delete_bus",
    "pg_database",
    "pg_databases",
    "servers",
]


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """The real PostgreSQL, Redis and RabbitMQ this run talks to."""
    with ExitStack() as stack:
        yield find_servers(stack)


@dataclass
class BusNames:
    """A private exchange and queue-name prefix for one test."""

    amqp_url: str
    exchange: str
    queue_prefix: str
    # Base names of the queues to delete afterwards (AMQP cannot list queues).
    queue_bases: list[str] = field(default_factory=lambda: ["chat", "assignment", "analytics"])

    def queue(self, base: str) -> str:
        """The full name of queue ``base``, remembered for clean-up."""
        if base not in self.queue_bases:
            self.queue_bases.append(base)
        return f"{self.queue_prefix}{base}"

    def env(self) -> dict[str, str]:
        """The environment variables that point a service at these names."""
        return {
            "AMQP_URL": self.amqp_url,
            "AMQP_EXCHANGE": self.exchange,
            "AMQP_QUEUE_PREFIX": self.queue_prefix,
        }


@pytest.fixture
async def bus_names(servers: Servers) -> AsyncIterator[BusNames]:
    """Unique names; afterwards their queues (with retry and dead-letter queues) are deleted."""
    tag = uuid7().hex[-12:]
    names = BusNames(servers.amqp_url, f"test.{tag}.events", f"test.{tag}.")
    yield names
    await delete_bus(names)


async def delete_bus(names: BusNames) -> None:
    """Delete the exchange and queues (with retry and dead-letter queues) of ``names``."""
    connection = await aio_pika.connect(names.amqp_url)
    try:
        channel = await connection.channel()
        for base in names.queue_bases:
            queue = f"{names.queue_prefix}{base}"
            for name in (queue, f"{queue}.dlq", *(f"{queue}.retry.{i}" for i in range(5))):
                await channel.queue_delete(name)
        await channel.exchange_delete(names.exchange)
    finally:
        await connection.close()


@pytest.fixture
async def amqp_connection(bus_names: BusNames) -> AsyncIterator[AbstractRobustConnection]:
    """A robust connection to the test broker, closed afterwards."""
    connection = await connect(bus_names.amqp_url, "test")
    yield connection
    await connection.close()


@pytest.fixture
async def pg_databases(servers: Servers) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Makes fresh, empty databases (their DSNs); every one is dropped after the test."""
    made: list[str] = []

    import asyncpg  # the "postgres" extra: only tests that ask for a database need it

    async def make() -> str:
        name = f"test_{uuid7().hex[-16:]}"
        conn = await asyncpg.connect(servers.postgres_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        made.append(name)
        return urlunsplit(urlsplit(servers.postgres_url)._replace(path=f"/{name}"))

    yield make
    conn = await asyncpg.connect(servers.postgres_url)
    try:
        for name in made:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_database(pg_databases: Callable[[], Awaitable[str]]) -> str:
    """DSN of a fresh, empty database, dropped after the test."""
    return await pg_databases()
