"""Test support shared by every package: real servers, fault injection, real processes.

Nothing here mocks a server: fixtures point at real PostgreSQL, Redis and
RabbitMQ, and :class:`TcpProxy` cuts real connections to them.
"""

from __future__ import annotations

from livedesk.platform.testing.processes import ServiceProcess, free_port
from livedesk.platform.testing.servers import Servers, find_servers
from livedesk.platform.testing.tcp_proxy import TcpProxy
from livedesk.platform.testing.waiting import wait_until

__all__ = ["Servers", "ServiceProcess", "TcpProxy", "find_servers", "free_port", "wait_until"]
