"""``message.created`` events written in the same statement as their message.

The writer encodes the envelope without the seq (a prefix); the database
appends the seq with ``chat_with_seq`` (shard_migrations/0001). These constants are
the field numbers that SQL function hard-codes: if the contract ever changes
them, the service refuses to start rather than emit wrong events.
"""

from __future__ import annotations

import datetime as dt
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from livedesk.contracts.events.v1.envelope_pb2 import Envelope
from livedesk.contracts.events.v1.message_pb2 import MessageCreated
from livedesk.platform.bus import encode, new_event

__all__ = ["ENVELOPE_FIELD", "SEQ_FIELD", "message_event_prefix", "with_seq"]

ENVELOPE_FIELD = 26  # Envelope.message_created
SEQ_FIELD = 2  # MessageCreated.seq

if (
    Envelope.DESCRIPTOR.fields_by_name["message_created"].number != ENVELOPE_FIELD
    or MessageCreated.DESCRIPTOR.fields_by_name["seq"].number != SEQ_FIELD
):
    raise RuntimeError("chat_with_seq (shard_migrations/0001) no longer matches the event contract")


def message_event_prefix(
    *,
    event_id: str,
    tenant_id: uuid.UUID,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    sender_kind: int,
    sender_id: uuid.UUID | None,
    body: str,
    client_msg_id: str | None,
    created_at: dt.datetime,
    producer: str,
) -> bytes:
    """The encoded ``message.created`` envelope, all but its seq."""
    stamp = Timestamp()
    stamp.FromDatetime(created_at)
    env = new_event(
        MessageCreated(
            message_id=str(message_id),
            sender_kind=sender_kind,  # type: ignore[arg-type]
            sender_id=str(sender_id or ""),
            body=body,
            client_msg_id=client_msg_id or "",
            created_at=stamp,
        ),
        tenant_id=str(tenant_id),
        conversation_id=str(conversation_id),
        producer=producer,
        event_id=event_id,
        occurred_at=created_at,
    )
    return encode(env)


def with_seq(prefix: bytes, seq: int) -> bytes:
    """What ``chat_with_seq`` computes, in Python (for tests and the slow path)."""
    env = Envelope()
    env.ParseFromString(prefix)
    env.message_created.seq = seq
    return encode(env)
