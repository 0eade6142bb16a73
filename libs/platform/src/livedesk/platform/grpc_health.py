"""The standard gRPC health service (grpc.health.v1), fed by the same checks as /readyz."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from livedesk.platform.health import HealthChecks
from livedesk.platform.tasks import cancel_and_wait

__all__ = ["grpc_health"]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@asynccontextmanager
async def grpc_health(
    server: grpc.aio.Server,
    checks: HealthChecks,
    services: Sequence[str],
    interval: float = 2.0,
) -> AsyncIterator[HealthServicer]:
    """Serve grpc.health.v1 on ``server`` for ``services`` (and "" = the whole server).

    Status follows ``checks`` every ``interval`` seconds; on exit every service
    turns NOT_SERVING so clients move away before the server stops.
    """
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = ["", *services]

    async def follow() -> None:
        while True:
            ready, _ = await checks.run()
            for name in names:
                await servicer.set(name, _SERVING if ready else _NOT_SERVING)
            await asyncio.sleep(interval)

    for name in names:
        await servicer.set(name, _NOT_SERVING)
    task = asyncio.create_task(follow(), name="grpc-health")
    try:
        yield servicer
    finally:
        await cancel_and_wait(task)
        await servicer.enter_graceful_shutdown()
