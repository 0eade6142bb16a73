"""Where the tests' real servers are.

Order of preference, per server: the environment variable (``POSTGRES_URL``,
``REDIS_URL``, ``AMQP_URL``); else the local default when something listens
there; else, where a Docker engine runs, a throwaway testcontainer; else a
clear error saying how to start one.
"""

from __future__ import annotations

import os
import shutil
import socket
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Servers", "find_servers"]

DEFAULTS = {
    "POSTGRES_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
}
HOW_TO_START = {
    "POSTGRES_URL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "REDIS_URL": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''",
    "AMQP_URL": "rabbitmq-server -detached",
}


@dataclass(frozen=True)
class Servers:
    """URLs of the servers the tests talk to."""

    postgres_url: str
    redis_url: str
    amqp_url: str


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 1):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


def _container_url(var: str, stack: ExitStack) -> str:  # pragma: no cover - needs Docker
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer
    from testcontainers.redis import RedisContainer

    container: Any
    if var == "POSTGRES_URL":
        container = stack.enter_context(PostgresContainer("postgres:16", driver=None))
        return str(container.get_connection_url())
    if var == "REDIS_URL":
        container = stack.enter_context(RedisContainer("redis:7"))
        return f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
    container = stack.enter_context(RabbitMqContainer("rabbitmq:3.13"))
    host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
    return f"amqp://guest:guest@{host}:{port}/"


def find_servers(stack: ExitStack) -> Servers:
    """Resolve every server URL; containers started here stop when ``stack`` closes."""
    urls: dict[str, str] = {}
    for var, default in DEFAULTS.items():
        if os.environ.get(var):
            urls[var] = os.environ[var]
        elif _listening(default):
            urls[var] = default
        elif _docker_available():
            urls[var] = _container_url(var, stack)
        else:
            raise RuntimeError(
                f"no server for {var}: set {var}, or start the local one: {HOW_TO_START[var]}"
            )
    return Servers(urls["POSTGRES_URL"], urls["REDIS_URL"], urls["AMQP_URL"])
