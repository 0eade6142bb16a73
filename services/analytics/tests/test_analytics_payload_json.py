"""payload_json writes the same JSON document as MessageToJson, for every payload type."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToJson

from livedesk.analytics.payload_json import payload_json
from livedesk.contracts.events.v1.envelope_pb2 import Envelope

if TYPE_CHECKING:
    from google.protobuf.message import Message

_PAYLOADS = [
    f for f in Envelope.DESCRIPTOR.fields if f.containing_oneof is not None and f.message_type
]


def _sample(field: FieldDescriptor, i: int) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        values = field.enum_type.values
        return values[min(len(values) - 1, 1 + i)].number
    if kind == FieldDescriptor.TYPE_BOOL:
        return True
    if kind == FieldDescriptor.TYPE_STRING:
        return f'text "{i}" é\n'
    if kind == FieldDescriptor.TYPE_BYTES:
        return bytes([i, 255, 0])
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 0.1 + i
    return 2**40 + i if "64" in str(field.cpp_type) or kind in (3, 4, 6, 16, 18) else 7 + i


def _fill(message: Message, depth: int = 0) -> Message:
    fields: list[Any] = list(message.DESCRIPTOR.fields)
    for i, field in enumerate(fields):
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                getattr(message, field.name).FromJsonString("2024-05-06T09:00:10.250Z")
            elif field.message_type.GetOptions().map_entry or depth > 2:
                continue
            elif repeated:
                _fill(getattr(message, field.name).add(), depth + 1)
            else:
                _fill(getattr(message, field.name), depth + 1)
        elif repeated:
            getattr(message, field.name).extend([_sample(field, i), _sample(field, i + 1)])
        else:
            setattr(message, field.name, _sample(field, i))
    return message


@pytest.mark.parametrize("field", _PAYLOADS, ids=[f.name for f in _PAYLOADS])
def test_same_document_as_message_to_json(field: FieldDescriptor) -> None:
    env = Envelope()
    payload = getattr(env, field.name)
    for message in (payload, _fill(payload)):  # defaults only, then every field set
        expected = MessageToJson(message, preserving_proto_field_name=True, indent=None)
        assert json.loads(payload_json(message)) == json.loads(expected)


def test_floats_and_maps_as_message_to_json() -> None:
    from google.protobuf import wrappers_pb2

    value = wrappers_pb2.FloatValue(value=0.1)
    assert json.loads(payload_json(value)) == {"value": 0.1}
    assert json.loads(payload_json(wrappers_pb2.UInt64Value(value=2**63))) == {"value": str(2**63)}
