"""A small typed client of AssignmentService: per-call timeouts, retries on UNAVAILABLE.

::

    async with AssignmentClient("127.0.0.1:50051") as client:
        await client.set_agent_status(tenant, agent, AgentStatus.AGENT_STATUS_ONLINE)

Every mutating RPC of the service is idempotent, so retrying after UNAVAILABLE
(a replica draining, a dependency blip) is safe. Other errors surface as
``grpc.aio.AioRpcError`` with their status code.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import grpc

from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.assignment.v1.assignment_service_pb2_grpc import AssignmentServiceStub

__all__ = ["AssignmentClient"]

R = TypeVar("R")


class AssignmentClient:
    """Typed calls to AssignmentService over one channel."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.1,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.aio.insecure_channel(target)
        self._owns_channel = channel is None
        self.stub = AssignmentServiceStub(self._channel)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    async def __aenter__(self) -> AssignmentClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (when this client opened it)."""
        if self._owns_channel:
            await self._channel.close()

    async def _call(self, call: Callable[[float], Awaitable[R]], timeout: float | None) -> R:
        """``call(timeout)``, retried with jittered backoff while UNAVAILABLE."""
        attempt = 0
        while True:
            try:
                return await call(timeout or self.timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries:
                    raise
            delay = self.backoff * (2**attempt) * (0.5 + random.random())
            attempt += 1
            await asyncio.sleep(delay)

    async def set_agent_status(
        self, tenant_id: str, agent_id: str, status: int, *, timeout: float | None = None
    ) -> pb.SetAgentStatusResponse:
        """SetAgentStatus."""
        req = pb.SetAgentStatusRequest(tenant_id=tenant_id, agent_id=agent_id, status=status)  # type: ignore[arg-type]
        return await self._call(lambda t: self.stub.SetAgentStatus(req, timeout=t), timeout)

    async def upsert_agent_profile(
        self, profile: pb.AgentProfile, *, timeout: float | None = None
    ) -> pb.UpsertAgentProfileResponse:
        """UpsertAgentProfile."""
        req = pb.UpsertAgentProfileRequest(profile=profile)
        return await self._call(lambda t: self.stub.UpsertAgentProfile(req, timeout=t), timeout)

    async def get_agent_profile(
        self, tenant_id: str, agent_id: str, *, timeout: float | None = None
    ) -> pb.AgentProfile:
        """GetAgentProfile."""
        req = pb.GetAgentProfileRequest(tenant_id=tenant_id, agent_id=agent_id)
        reply = await self._call(lambda t: self.stub.GetAgentProfile(req, timeout=t), timeout)
        return reply.profile

    async def list_agents(
        self, request: pb.ListAgentsRequest, *, timeout: float | None = None
    ) -> pb.ListAgentsResponse:
        """ListAgents (one page)."""
        return await self._call(lambda t: self.stub.ListAgents(request, timeout=t), timeout)

    async def list_queue(
        self, request: pb.ListQueueRequest, *, timeout: float | None = None
    ) -> pb.ListQueueResponse:
        """ListQueue (one page)."""
        return await self._call(lambda t: self.stub.ListQueue(request, timeout=t), timeout)

    async def assign(
        self, request: pb.AssignConversationRequest, *, timeout: float | None = None
    ) -> pb.AssignConversationResponse:
        """AssignConversation."""
        return await self._call(lambda t: self.stub.AssignConversation(request, timeout=t), timeout)

    async def transfer(
        self, request: pb.TransferConversationRequest, *, timeout: float | None = None
    ) -> pb.TransferConversationResponse:
        """TransferConversation."""
        return await self._call(
            lambda t: self.stub.TransferConversation(request, timeout=t), timeout
        )

    async def release(
        self, request: pb.ReleaseConversationRequest, *, timeout: float | None = None
    ) -> pb.ReleaseConversationResponse:
        """ReleaseConversation."""
        return await self._call(
            lambda t: self.stub.ReleaseConversation(request, timeout=t), timeout
        )

    async def report_console_presence(
        self,
        tenant_id: str,
        agent_ids: Sequence[str],
        reporter_id: str,
        *,
        timeout: float | None = None,
    ) -> pb.ReportConsolePresenceResponse:
        """ReportConsolePresence."""
        req = pb.ReportConsolePresenceRequest(
            tenant_id=tenant_id, agent_ids=agent_ids, reporter_id=reporter_id
        )
        return await self._call(lambda t: self.stub.ReportConsolePresence(req, timeout=t), timeout)
