"""Starting LiveDesk services as real processes on free ports, each with its own database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from livedesk.platform.testing import ServiceProcess, free_port
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.testing.servers import Servers

__all__ = ["Stack", "running_stack"]


@dataclass
class Stack:
    """The three services of one test, and how to reach them."""

    chat: ServiceProcess
    assignment: ServiceProcess
    analytics: ServiceProcess
    chat_db: str
    assignment_db: str
    assignment_grpc_port: int

    @property
    def processes(self) -> list[ServiceProcess]:
        """All three, consumers first."""
        return [self.assignment, self.analytics, self.chat]


@asynccontextmanager
async def running_stack(
    tmp_path: Path,
    servers: Servers,
    bus: BusNames,
    new_database: Callable[[], Awaitable[str]],
) -> AsyncIterator[Stack]:
    """Start assignment, analytics and chat; wait until all are ready; kill leftovers on exit."""
    common = {
        **bus.env(),
        "REDIS_URL": servers.redis_url,
        "DB_AUTO_CREATE": "false",
        "LIVEDESK_ENV": "test",
        "LOG_LEVEL": "INFO",
    }
    chat_db, assignment_db = await new_database(), await new_database()
    ports = {name: free_port() for name in ("chat", "assignment", "analytics", "grpc")}
    stack = Stack(
        chat=ServiceProcess(
            "livedesk.chat",
            {
                **common,
                "PORT": str(ports["chat"]),
                "DATABASE_URL": chat_db,
                "ASSIGNMENT_GRPC_URL": f"127.0.0.1:{ports['grpc']}",
                "PRESENCE_INTERVAL": "1",
            },
            tmp_path / "chat.log",
            ports["chat"],
        ),
        assignment=ServiceProcess(
            "livedesk.assignment",
            {
                **common,
                "PORT": str(ports["assignment"]),
                "GRPC_PORT": str(ports["grpc"]),
                "DATABASE_URL": assignment_db,
                # Debug logs include one line per handled event, with its trace.
                "LOG_LEVEL": "DEBUG",
            },
            tmp_path / "assignment.log",
            ports["assignment"],
        ),
        analytics=ServiceProcess(
            "livedesk.analytics",
            {
                **common,
                "PORT": str(ports["analytics"]),
                "CHDB_PATH": str(tmp_path / "chdb"),
                "INGEST_FLUSH_INTERVAL": "0.1",
            },
            tmp_path / "analytics.log",
            ports["analytics"],
        ),
        chat_db=chat_db,
        assignment_db=assignment_db,
        assignment_grpc_port=ports["grpc"],
    )
    try:
        for process in stack.processes:
            process.start()
        for process in stack.processes:
            await process.wait_ready(timeout=60)
        yield stack
    finally:
        for process in stack.processes:
            process.stop_quietly()
