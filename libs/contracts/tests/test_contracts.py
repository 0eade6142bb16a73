"""Tests of the generated LiveDesk contracts package (``livedesk.contracts``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import timestamp_pb2

from livedesk.contracts.assignment.v1 import assignment_service_pb2 as asg
from livedesk.contracts.assignment.v1 import assignment_service_pb2_grpc as asg_grpc
from livedesk.contracts.events.v1 import (
    agent_pb2,
    common_pb2,
    conversation_pb2,
    csat_pb2,
    envelope_pb2,
    message_pb2,
    visitor_pb2,
)

if TYPE_CHECKING:
    from google.protobuf.descriptor import FieldDescriptor, FileDescriptor

REPO_ROOT = Path(__file__).resolve().parents[3]

#: Every event type LiveDesk publishes. Adding one means adding it here, to a payload
#: message and to Envelope.payload.
EVENT_TYPES = [
    "conversation.created",
    "conversation.queued",
    "conversation.assigned",
    "conversation.transferred",
    "conversation.resolved",
    "conversation.reopened",
    "message.created",
    "agent.status_changed",
    "agent.profile_changed",
    "csat.submitted",
    "conversation.archived",
    "conversation.purged",
    "visitor.erased",
]

#: The RPCs of AssignmentService; each takes XRequest and returns XResponse.
ASSIGNMENT_RPCS = [
    "SetAgentStatus",
    "UpsertAgentProfile",
    "GetAgentProfile",
    "ListAgents",
    "ListQueue",
    "AssignConversation",
    "TransferConversation",
    "ReleaseConversation",
    "ReportConsolePresence",
]

# "<area>_<action>": the area has no '_', the action may (agent_status_changed).
_PAYLOAD_FIELD = re.compile(r"^[a-z]+_[a-z]+(?:_[a-z]+)*$")

EVENT_FILES: list[FileDescriptor] = [
    common_pb2.DESCRIPTOR,
    conversation_pb2.DESCRIPTOR,
    message_pb2.DESCRIPTOR,
    agent_pb2.DESCRIPTOR,
    csat_pb2.DESCRIPTOR,
    visitor_pb2.DESCRIPTOR,
    envelope_pb2.DESCRIPTOR,
]
ALL_FILES: list[FileDescriptor] = [*EVENT_FILES, asg.DESCRIPTOR]


def _payload_fields() -> list[FieldDescriptor]:
    return list(envelope_pb2.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields)


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def test_envelope_round_trip() -> None:
    occurred = timestamp_pb2.Timestamp(seconds=1_767_225_600, nanos=123_000_000)
    env = envelope_pb2.Envelope(
        event_id="0190b4a2-7c1e-7d3a-9f00-2b5c8e4d1a6f",
        type="conversation.created",
        occurred_at=occurred,
        tenant_id="t-1",
        conversation_id="c-1",
        producer="chat",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        conversation_created=conversation_pb2.ConversationCreated(
            inbox_id="inbox-1",
            channel=conversation_pb2.CHANNEL_WEB_WIDGET,
            visitor_id="v-1",
            priority=common_pb2.PRIORITY_HIGH,
            required_skills=["billing", "es"],
            team_id="team-1",
            subject="Refund",
        ),
    )

    decoded = envelope_pb2.Envelope.FromString(env.SerializeToString())

    assert decoded == env
    assert decoded.WhichOneof("payload") == "conversation_created"
    assert decoded.conversation_created.required_skills == ["billing", "es"]
    assert decoded.conversation_created.priority == common_pb2.PRIORITY_HIGH
    assert decoded.occurred_at.ToNanoseconds() == occurred.ToNanoseconds()


def test_message_created_round_trip_keeps_large_seq() -> None:
    env = envelope_pb2.Envelope(
        type="message.created",
        message_created=message_pb2.MessageCreated(
            message_id="m-1",
            seq=2**63 + 1,
            sender_kind=common_pb2.ACTOR_KIND_AGENT,
            sender_id="a-1",
            body="héllo",
            client_msg_id="k-1",
        ),
    )

    decoded = envelope_pb2.Envelope.FromString(env.SerializeToString())

    assert decoded.message_created.seq == 2**63 + 1
    assert decoded.message_created.body == "héllo"
    assert decoded.WhichOneof("payload") == decoded.type.replace(".", "_")


@pytest.mark.parametrize("field", _payload_fields(), ids=lambda f: f.name)
def test_payload_field_follows_type_convention(field: FieldDescriptor) -> None:
    assert _PAYLOAD_FIELD.match(field.name), f"{field.name} is not <area>_<action>"
    event_type = field.name.replace("_", ".", 1)
    assert event_type.replace(".", "_") == field.name
    assert event_type in EVENT_TYPES
    assert field.message_type is not None
    assert field.message_type.name == _camel(field.name)
    assert field.number >= 20


def test_envelope_payload_covers_exactly_the_event_types() -> None:
    types = [f.name.replace("_", ".", 1) for f in _payload_fields()]
    assert sorted(types) == sorted(EVENT_TYPES)
    metadata = [f for f in envelope_pb2.Envelope.DESCRIPTOR.fields if f.containing_oneof is None]
    assert all(f.number < 20 for f in metadata)


def test_every_event_message_is_an_envelope_payload() -> None:
    payload_messages = {f.message_type.full_name for f in _payload_fields() if f.message_type}
    shared = {
        "livedesk.events.v1.Envelope",
        "livedesk.events.v1.Shift",
        "livedesk.events.v1.ShiftException",
    }
    declared = {
        m.full_name for fd in EVENT_FILES for m in fd.message_types_by_name.values()
    } - shared
    assert declared == payload_messages


@pytest.mark.parametrize("file", ALL_FILES, ids=lambda f: f.name)
def test_enums_have_unspecified_zero(file: FileDescriptor) -> None:
    enums = list(file.enum_types_by_name.values())
    for message in file.message_types_by_name.values():
        enums.extend(message.enum_types)
    for enum in enums:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper()
        assert enum.values_by_number[0].name == f"{prefix}_UNSPECIFIED"


def test_assignment_service_shape() -> None:
    service = asg.DESCRIPTOR.services_by_name["AssignmentService"]
    assert service.full_name == "livedesk.assignment.v1.AssignmentService"
    assert [m.name for m in service.methods] == ASSIGNMENT_RPCS
    for method in service.methods:
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"
    for name in ASSIGNMENT_RPCS:
        assert callable(getattr(asg_grpc.AssignmentServiceServicer, name))
    assert callable(asg_grpc.add_AssignmentServiceServicer_to_server)
    assert asg_grpc.AssignmentServiceStub is not None


class _Servicer(asg_grpc.AssignmentServiceServicer):
    async def GetAgentProfile(
        self,
        request: asg.GetAgentProfileRequest,
        context: grpc.aio.ServicerContext[asg.GetAgentProfileRequest, asg.GetAgentProfileResponse],
    ) -> asg.GetAgentProfileResponse:
        if request.agent_id != "a-1":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such agent")
        return asg.GetAgentProfileResponse(
            profile=asg.AgentProfile(
                tenant_id=request.tenant_id,
                agent_id=request.agent_id,
                status=common_pb2.AGENT_STATUS_ONLINE,
                capacity=3,
                shifts=[
                    common_pb2.Shift(
                        weekday=common_pb2.WEEKDAY_MONDAY, start_minute=540, end_minute=1020
                    )
                ],
            )
        )


async def test_grpc_stub_and_servicer_talk() -> None:
    server = grpc.aio.server()
    asg_grpc.add_AssignmentServiceServicer_to_server(_Servicer(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = asg_grpc.AssignmentServiceStub(channel)
            reply = await stub.GetAgentProfile(
                asg.GetAgentProfileRequest(tenant_id="t-1", agent_id="a-1"), timeout=10
            )
            assert reply.profile.capacity == 3
            assert reply.profile.shifts[0].weekday == common_pb2.WEEKDAY_MONDAY

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetAgentProfile(
                    asg.GetAgentProfileRequest(tenant_id="t-1", agent_id="nope"), timeout=10
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(None)


def test_generated_code_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
