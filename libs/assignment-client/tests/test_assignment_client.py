"""The client's retry and timeout behaviour against a real (absent or slow) gRPC peer."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from livedesk.assignment_client import AssignmentClient
from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.assignment.v1.assignment_service_pb2_grpc import (
    AssignmentServiceServicer,
    add_AssignmentServiceServicer_to_server,
)
from livedesk.platform.testing import free_port


async def test_unavailable_is_retried_then_raised() -> None:
    port = free_port()  # nothing listens there
    async with AssignmentClient(f"127.0.0.1:{port}", timeout=1, retries=2, backoff=0.01) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.get_agent_profile("t", "a")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


class _Slow(AssignmentServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def GetAgentProfile(
        self, request: pb.GetAgentProfileRequest, context: object
    ) -> pb.GetAgentProfileResponse:
        self.calls += 1
        await asyncio.Event().wait()  # never answers: only the deadline ends the call
        return pb.GetAgentProfileResponse()


async def test_deadline_is_sent_and_not_retried() -> None:
    server = grpc.aio.server()
    slow = _Slow()  # type: ignore[abstract]  # only GetAgentProfile is called
    add_AssignmentServiceServicer_to_server(slow, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AssignmentClient(f"127.0.0.1:{port}", timeout=0.2, retries=3) as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.get_agent_profile("t", "a")
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert slow.calls == 1  # a deadline is final: not retried like UNAVAILABLE
    finally:
        await server.stop(0)
