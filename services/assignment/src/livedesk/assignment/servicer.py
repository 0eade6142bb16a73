"""The AssignmentService gRPC servicer.

The routing engine arrives with its own issue; until then every RPC answers
UNIMPLEMENTED through the real server, so clients and probes see the true state.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.assignment.v1.assignment_service_pb2_grpc import (
    AssignmentServiceServicer,
)

__all__ = ["AssignmentApi"]

Context = grpc.aio.ServicerContext[Any, Any]


async def _unimplemented(context: Context, rpc: str) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not implemented yet")


class AssignmentApi(AssignmentServiceServicer):
    """livedesk.assignment.v1.AssignmentService."""

    async def SetAgentStatus(
        self,
        request: pb.SetAgentStatusRequest,
        context: Context,
    ) -> pb.SetAgentStatusResponse:
        """See the proto: not implemented yet."""
        await _unimplemented(context, "SetAgentStatus")

    async def UpsertAgentProfile(
        self,
        request: pb.UpsertAgentProfileRequest,
        context: grpc.aio.ServicerContext[
            pb.UpsertAgentProfileRequest, pb.UpsertAgentProfileResponse
        ],
    ) -> pb.UpsertAgentProfileResponse:
        """See the proto: not implemented yet."""
        await _unimplemented(context, "UpsertAgentProfile")

    async def GetAgentProfile(
        self,
        request: pb.GetAgentProfileRequest,
        context: Context,
    ) -> pb.GetAgentProfileResponse:
        """See the proto: not implemented yet."""
        await _unimplemented(context, "GetAgentProfile")

    async def ListAgents(
        self,
        request: pb.ListAgentsRequest,
        context: Context,
    ) -> pb.ListAgentsResponse:
        """See the proto: not implemented yet."""
        await _unimplemented(context, "ListAgents")

    async def ListQueue(
        self,
        request: pb.ListQueueRequest,
        context: Context,
    ) -> pb.ListQueueResponse:
        """See the proto: not implemented yet."""
        await _unimplemented(context, "ListQueue")

    async def AssignConversation(
        self,
        request: pb.AssignConversationRequest,
        context: grpc.aio.ServicerContext[
            pb.AssignConversationRequest, pb.AssignConversationResponse
        ],
    ) -> pb.AssignConversationResponse:
        """See the proto: not implemented yet."""
        await _unimplemented(context, "AssignConversation")

    async def TransferConversation(
        self,
        request: pb.TransferConversationRequest,
        context: grpc.aio.ServicerContext[
            pb.TransferConversationRequest, pb.TransferConversationResponse
        ],
    ) -> pb.TransferConversationResponse:
        """See the proto: not implemented yet."""
        await _unimplemented(context, "TransferConversation")

    async def ReleaseConversation(
        self,
        request: pb.ReleaseConversationRequest,
        context: grpc.aio.ServicerContext[
            pb.ReleaseConversationRequest, pb.ReleaseConversationResponse
        ],
    ) -> pb.ReleaseConversationResponse:
        """See the proto: not implemented yet."""
        await _unimplemented(context, "ReleaseConversation")
