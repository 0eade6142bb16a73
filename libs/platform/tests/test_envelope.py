"""Envelope building and validation (pure logic)."""

from __future__ import annotations

import pytest

from livedesk.contracts.events.v1.agent_pb2 import AgentStatusChanged
from livedesk.contracts.events.v1.conversation_pb2 import ConversationCreated
from livedesk.platform.bus import decode, encode, event_type_of, new_event, payload_of
from livedesk.platform.bus.envelope import EVENT_TYPES
from livedesk.platform.errors import DecodeError
from livedesk.platform.ids import is_uuid, uuid7, uuid7_str
from livedesk.platform.tracing import parse_traceparent, trace_context

TENANT = uuid7_str()


def test_every_payload_has_a_type_of_area_dot_action() -> None:
    assert "conversation.created" in EVENT_TYPES
    assert "agent.status_changed" in EVENT_TYPES
    assert all(t.count(".") == 1 for t in EVENT_TYPES)
    assert event_type_of(AgentStatusChanged()) == "agent.status_changed"


def test_new_event_round_trips() -> None:
    env = new_event(ConversationCreated(inbox_id="i"), tenant_id=TENANT, producer="chat")
    back = decode(encode(env))
    assert back == env
    assert back.type == "conversation.created"
    assert is_uuid(back.event_id)
    assert parse_traceparent(back.traceparent) is not None
    assert payload_of(back) == ConversationCreated(inbox_id="i")


def test_new_event_continues_the_current_trace() -> None:
    with trace_context(None) as trace_id:
        env = new_event(ConversationCreated(), tenant_id=TENANT, producer="chat")
    parsed = parse_traceparent(env.traceparent)
    assert parsed is not None
    assert parsed[0] == trace_id


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff", b"", b"\x0a\x03abc"],
    ids=["garbage", "empty", "bad-event-id"],
)
def test_decode_rejects_what_is_not_an_event(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(body)


def test_decode_rejects_type_payload_mismatch() -> None:
    env = new_event(ConversationCreated(), tenant_id=TENANT, producer="chat")
    env.type = "agent.status_changed"
    with pytest.raises(DecodeError, match="carries payload"):
        decode(env.SerializeToString())


def test_decode_rejects_missing_tenant() -> None:
    env = new_event(ConversationCreated(), tenant_id=TENANT, producer="chat")
    env.tenant_id = ""
    with pytest.raises(DecodeError, match="tenant_id"):
        decode(env.SerializeToString())


def test_uuid7_is_version_7_and_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(u.version == 7 for u in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
