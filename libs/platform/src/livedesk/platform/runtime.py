"""Process runtime: uvloop, signals, graceful shutdown, exit codes.

A service's ``main(shutdown)`` opens its resources (usually in an
``AsyncExitStack``), awaits ``shutdown.wait()``, and closes them on the way
out. SIGTERM or SIGINT sets the event; a second signal, or a drain longer
than the timeout, ends the process at once with a non-zero code.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import uvloop
from aiohttp import web

from livedesk.platform.errors import ConfigError, DependencyError
from livedesk.platform.logging import configure_logging, get_logger
from livedesk.platform.loop_lag import LoopLagMonitor

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DEPENDENCY",
    "Shutdown",
    "run_service",
    "serve_http",
    "settle_garbage_collector",
]

EXIT_CONFIG = 2
EXIT_DEPENDENCY = 3

log = get_logger("livedesk.runtime")


class Shutdown:
    """Set once the process has been asked to stop.

    ``drain_timeout`` bounds the drain after the signal; a service sets it from
    its settings once they are loaded.
    """

    def __init__(self, drain_timeout: float = 10.0) -> None:
        self._event = asyncio.Event()
        self.reason = ""
        self.drain_timeout = drain_timeout

    def request(self, reason: str) -> None:
        """Ask the service to drain and stop."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def requested(self) -> bool:
        """True once a stop was requested."""
        return self._event.is_set()

    async def wait(self) -> None:
        """Return when a stop is requested."""
        await self._event.wait()


async def _supervise(main: Callable[[Shutdown], Awaitable[None]]) -> int:
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if signals_seen == 1:
            log.info("shutdown_requested", signal=name)
            shutdown.request(name)
            # Bound the drain: a stuck close must not keep a pod Terminating forever.
            loop.call_later(shutdown.drain_timeout, _force_exit, "drain timed out")
        else:
            _force_exit(f"second {name}")

    def _force_exit(why: str) -> None:
        log.error("forced_exit", reason=why)
        sys.stdout.flush()
        os._exit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    lag = LoopLagMonitor()
    lag.start()
    try:
        await main(shutdown)
    except ConfigError as exc:
        log.error("config_error", error=str(exc))
        return EXIT_CONFIG
    except DependencyError as exc:
        log.error("dependency_unreachable", error=str(exc))
        return EXIT_DEPENDENCY
    finally:
        lag.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped", reason=shutdown.reason or "main returned")
    return 0


def run_service(main: Callable[[Shutdown], Awaitable[None]], service: str) -> int:
    """Run ``main`` on uvloop until it returns; the process exit code.

    Logging starts as JSON for ``service`` so that even a configuration error
    is one parseable line; ``main`` reconfigures it from its settings.
    """
    configure_logging(service)
    # Long-lived services hold many objects (sockets, pools, caches): full
    # collections of them showed up as 100 ms pauses at p99. Objects made
    # while starting are frozen out of the collector in ``main`` (see
    # ``settle_garbage_collector``), and young-generation collections are rarer.
    gc.set_threshold(50_000, 20, 100)
    return uvloop.run(_supervise(main))


def settle_garbage_collector() -> None:
    """Freeze what exists now (start-up state) so collections never walk it again."""
    gc.collect()
    gc.freeze()


@asynccontextmanager
async def serve_http(
    app: web.Application, host: str, port: int, shutdown_timeout: float = 5.0
) -> AsyncIterator[web.AppRunner]:
    """Serve ``app`` on host:port; on exit stop accepting, let requests finish, close."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    # A deep accept backlog: thousands of clients reconnect at once after a pod
    # restarts, and the default (128) would refuse most of them.
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=4096)
    await site.start()
    log.info("http_listening", host=host, port=port)
    try:
        yield runner
    finally:
        await runner.cleanup()
