"""Envelope building and validation (pure logic)."""

from __future__ import annotations

import pytest
import structlog

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


def test_trace_context_restores_the_outer_context_on_exit() -> None:
    outer_parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    with trace_context(outer_parent, queue="q") as outer:
        with trace_context(None, queue="inner", event_id="e") as inner:
            assert structlog.contextvars.get_contextvars() == {
                "trace_id": inner,
                "queue": "inner",
                "event_id": "e",
            }
        assert structlog.contextvars.get_contextvars() == {"trace_id": outer, "queue": "q"}
    assert outer == "a" * 32
    assert structlog.contextvars.get_contextvars() == {}


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", True),
        ("0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B", True),
        ("0190a1b2c3d47e5f8a9b0c1d2e3f4a5b", False),
        ("{0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b}", False),
        ("urn:uuid:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", False),
        ("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\n", False),
        ("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5", False),
        ("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g", False),
        ("", False),
    ],
)
def test_is_uuid_accepts_only_the_canonical_form(text: str, expected: bool) -> None:
    assert is_uuid(text) is expected
