"""The assignment gRPC server on a real port: health, reflection, status codes."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from livedesk.assignment.grpc_server import SERVICE_NAME, serve_grpc
from livedesk.assignment.servicer import AssignmentApi
from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.assignment.v1.assignment_service_pb2_grpc import AssignmentServiceStub
from livedesk.platform.health import HealthChecks
from livedesk.platform.testing import free_port, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_follows_checks_and_rpcs_answer_unimplemented() -> None:
    healthy = True

    async def check() -> None:
        if not healthy:
            raise ConnectionError("dependency down")

    checks = HealthChecks()
    checks.add("dep", check)
    port = free_port()
    async with (
        serve_grpc("127.0.0.1", port, AssignmentApi(), checks, grace=1),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)

        async def status(want: int) -> bool:
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
            )
            return bool(reply.status == want)

        await wait_until(lambda: status(SERVING), timeout=10, what="SERVING")
        healthy = False
        await wait_until(lambda: status(NOT_SERVING), timeout=10, what="NOT_SERVING")

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await AssignmentServiceStub(channel).SetAgentStatus(
                pb.SetAgentStatusRequest(), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in replies for s in r.list_services_response.service]
        assert SERVICE_NAME in names
        assert "grpc.health.v1.Health" in names
