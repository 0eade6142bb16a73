"""Connecting to RabbitMQ: fail fast on the first connect, reconnect forever after."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from livedesk.platform.errors import DependencyError
from livedesk.platform.health import Check

__all__ = ["connect", "connection_check"]


async def connect(url: str, name: str, timeout: float = 10.0) -> AbstractRobustConnection:
    """A robust connection named ``name`` (shown in the broker's UI).

    Raises:
        DependencyError: the broker did not accept the first connection.
    """
    try:
        return await aio_pika.connect_robust(
            url, timeout=timeout, client_properties={"connection_name": name}
        )
    except Exception as exc:  # refused, reset mid-handshake, timed out, bad credentials...
        raise DependencyError(f"RabbitMQ at {_redact(url)} unreachable: {exc!r}") from exc


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def connection_check(connection: AbstractRobustConnection) -> Check:
    """A readiness check that fails while ``connection`` is down or reconnecting."""

    async def check() -> None:
        if connection.is_closed or not connection.connected.is_set():
            raise ConnectionError("RabbitMQ connection is down")

    return check
