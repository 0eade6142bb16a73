"""Chat's side of the assignment service: presence, status, routing profiles, transfers.

Every call goes through the assignment team's typed client (timeouts, retries
on UNAVAILABLE); gRPC status codes become chat's domain errors here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import grpc

from livedesk.assignment_client import AssignmentClient
from livedesk.chat.access import Principal
from livedesk.chat.errors import ChatError, Conflict, Forbidden, Invalid, NotFound, Unavailable
from livedesk.chat.sockets import SocketRegistry
from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.events.v1.common_pb2 import AgentStatus
from livedesk.platform.logging import get_logger
from livedesk.platform.tasks import cancel_and_wait

__all__ = ["STATUSES", "AssignmentLink"]

log = get_logger("livedesk.chat.assignment")

T = TypeVar("T")

STATUSES = {
    "online": AgentStatus.AGENT_STATUS_ONLINE,
    "away": AgentStatus.AGENT_STATUS_AWAY,
    "offline": AgentStatus.AGENT_STATUS_OFFLINE,
}

_ERRORS: dict[grpc.StatusCode, type[ChatError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: Invalid,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
}


class AssignmentLink:
    """Calls to the assignment service on behalf of chat's callers."""

    def __init__(self, client: AssignmentClient, registry: SocketRegistry, pod_id: str) -> None:
        self.client = client
        self._registry = registry
        self._pod_id = pod_id
        self._reported: set[str] = set()

    async def call(self, rpc: Callable[[], Awaitable[T]]) -> T:
        """Run ``rpc``, turning gRPC failures into chat errors."""
        try:
            return await rpc()
        except grpc.aio.AioRpcError as exc:
            error = _ERRORS.get(exc.code(), Unavailable)
            raise error(exc.details() or exc.code().name.lower()) from None

    async def set_status(self, principal: Principal, status: str) -> None:
        """An agent changed their status in the console."""
        await self.call(
            lambda: self.client.set_agent_status(
                str(principal.tenant_id), str(principal.subject_id), STATUSES[status]
            )
        )

    async def transfer(
        self,
        principal: Principal,
        conversation_id: str,
        *,
        agent_id: str | None,
        team_id: str | None,
        reason: str,
    ) -> pb.TransferConversationResponse:
        """Move a conversation to another agent or a team queue (through the claim path)."""
        request = pb.TransferConversationRequest(
            tenant_id=str(principal.tenant_id),
            conversation_id=conversation_id,
            reason=reason,
            actor_id=str(principal.subject_id),
        )
        if agent_id is not None:
            request.agent_id = agent_id
        else:
            request.team_id = team_id or ""
        return await self.call(lambda: self.client.transfer(request))

    async def report_presence(self) -> None:
        """Tell the engine which agents have a live console on this pod."""
        online = {
            str(tenant): sorted(str(a) for a in agents)
            for tenant, agents in self._registry.staff_online().items()
        }
        # Tenants whose last console left get one empty report, then no more.
        for tenant in set(online) | self._reported:
            agents = online.get(tenant, [])
            with contextlib.suppress(ChatError):
                await self.call(self._reporter(tenant, agents))
        self._reported = set(online)

    def _reporter(
        self, tenant: str, agents: list[str]
    ) -> Callable[[], Awaitable[pb.ReportConsolePresenceResponse]]:
        return lambda: self.client.report_console_presence(tenant, agents, self._pod_id)

    @asynccontextmanager
    async def reporting(self, interval: float) -> AsyncIterator[None]:
        """Report presence every ``interval`` seconds while inside."""

        async def loop() -> None:
            while True:
                try:
                    await self.report_presence()
                except Exception:  # the loop must survive anything; the engine has a grace period
                    log.warning("presence_report_failed", exc_info=True)
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop(), name="presence-reporter")
        try:
            yield
        finally:
            await cancel_and_wait(task)
