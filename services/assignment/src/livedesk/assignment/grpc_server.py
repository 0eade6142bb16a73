"""The gRPC server: AssignmentService, grpc.health.v1 and server reflection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from grpc_reflection.v1alpha import reflection

from livedesk.contracts.assignment.v1 import assignment_service_pb2, assignment_service_pb2_grpc
from livedesk.platform.grpc_health import grpc_health
from livedesk.platform.health import HealthChecks
from livedesk.platform.logging import get_logger

__all__ = ["SERVICE_NAME", "serve_grpc"]

log = get_logger("livedesk.assignment.grpc")

SERVICE_NAME = assignment_service_pb2.DESCRIPTOR.services_by_name["AssignmentService"].full_name


@asynccontextmanager
async def serve_grpc(
    host: str,
    port: int,
    servicer: assignment_service_pb2_grpc.AssignmentServiceServicer,
    checks: HealthChecks,
    grace: float = 5.0,
) -> AsyncIterator[grpc.aio.Server]:
    """Serve until exit; then refuse new calls and let running ones finish within ``grace``."""
    server = grpc.aio.server()
    assignment_service_pb2_grpc.add_AssignmentServiceServicer_to_server(servicer, server)
    async with grpc_health(server, checks, [SERVICE_NAME]):
        reflection.enable_server_reflection(
            [SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME], server
        )
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot bind gRPC port {host}:{port}")
        await server.start()
        log.info("grpc_listening", host=host, port=bound)
        try:
            yield server
        finally:
            await server.stop(grace)
