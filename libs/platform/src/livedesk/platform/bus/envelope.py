"""Building, encoding and validating event envelopes.

The envelope's ``payload`` oneof has one field per event type, named after
the type with its first '.' replaced by '_' (``conversation.created`` ->
``conversation_created``); that convention maps types to messages here.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf.message import DecodeError as ProtoDecodeError
from google.protobuf.message import Message

from livedesk.contracts.events.v1.envelope_pb2 import Envelope
from livedesk.platform.errors import DecodeError
from livedesk.platform.ids import is_uuid, uuid7_str
from livedesk.platform.tracing import current_traceparent, parse_traceparent

__all__ = [
    "EVENT_TYPES",
    "Envelope",
    "decode",
    "encode",
    "event_type_of",
    "new_event",
    "payload_of",
]

_PAYLOAD = Envelope.DESCRIPTOR.oneofs_by_name["payload"]
_FIELD_OF_TYPE: dict[str, str] = {f.name.replace("_", ".", 1): f.name for f in _PAYLOAD.fields}
_TYPE_OF_MESSAGE: dict[str, str] = {
    f.message_type.full_name: f.name.replace("_", ".", 1)
    for f in _PAYLOAD.fields
    if f.message_type is not None
}
EVENT_TYPES: frozenset[str] = frozenset(_FIELD_OF_TYPE)
MAX_EVENT_BYTES = 1 << 20


def event_type_of(payload: Message) -> str:
    """The event type (routing key) that carries ``payload``'s message."""
    try:
        return _TYPE_OF_MESSAGE[payload.DESCRIPTOR.full_name]
    except KeyError:
        raise ValueError(f"{payload.DESCRIPTOR.full_name} is not an event payload") from None


def new_event(
    payload: Message,
    *,
    tenant_id: str,
    producer: str,
    conversation_id: str = "",
    event_id: str | None = None,
    occurred_at: dt.datetime | None = None,
    traceparent: str | None = None,
) -> Envelope:
    """A complete envelope for ``payload``, stamped with a UUIDv7 and the current trace."""
    event_type = event_type_of(payload)
    env = Envelope(
        event_id=event_id or uuid7_str(),
        type=event_type,
        tenant_id=tenant_id,
        conversation_id=conversation_id,
        producer=producer,
        traceparent=traceparent or current_traceparent(),
    )
    env.occurred_at.FromDatetime(occurred_at or dt.datetime.now(dt.UTC))
    getattr(env, _FIELD_OF_TYPE[event_type]).CopyFrom(payload)
    validate(env)
    return env


def encode(env: Envelope) -> bytes:
    """Wire bytes of ``env``."""
    return env.SerializeToString(deterministic=True)


def validate(env: Envelope) -> None:
    """Raise DecodeError unless ``env`` is a well-formed LiveDesk event."""
    if not is_uuid(env.event_id):
        raise DecodeError(f"event_id {env.event_id!r} is not a UUID")
    if env.type not in _FIELD_OF_TYPE:
        raise DecodeError(f"unknown event type {env.type!r}")
    which = env.WhichOneof("payload")
    if which != _FIELD_OF_TYPE[env.type]:
        raise DecodeError(f"type {env.type!r} carries payload {which!r}")
    if not env.tenant_id:
        raise DecodeError("tenant_id is empty")
    if not env.producer:
        raise DecodeError("producer is empty")
    if env.traceparent and parse_traceparent(env.traceparent) is None:
        raise DecodeError(f"traceparent {env.traceparent!r} is malformed")


def decode(body: bytes) -> Envelope:
    """Parse and validate an envelope; DecodeError for anything that is not one."""
    if len(body) > MAX_EVENT_BYTES:
        raise DecodeError(f"body of {len(body)} bytes exceeds {MAX_EVENT_BYTES}")
    env = Envelope()
    try:
        env.ParseFromString(body)
    except (ProtoDecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"not a protobuf Envelope: {exc}") from None
    validate(env)
    return env


def payload_of(env: Envelope) -> Message:
    """The typed payload message of ``env``."""
    which = env.WhichOneof("payload")
    if which is None:
        raise DecodeError("envelope has no payload")
    payload: Message = getattr(env, which)
    return payload
