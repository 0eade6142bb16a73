"""An event payload as JSON, as ``MessageToJson(preserving_proto_field_name=True)`` writes it.

``MessageToJson`` walks every message in Python and costs more than the rest
of ingesting an event together; this walks only the fields that are set
(``ListFields``, done in C) and lets orjson write the text. The output is the
same JSON document (same names, 64-bit integers as strings, enums by name,
timestamps in RFC 3339, bytes in base64, defaults left out); only the
whitespace may differ, which the materialized views' ``JSONExtract*`` ignore.
A test compares both on every payload type.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["payload_json"]

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FLOATS = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})
_WELL_KNOWN_STRINGS = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)


def payload_json(message: Message) -> str:
    """``message`` as one line of JSON."""
    return orjson.dumps(_message(message)).decode()


def _message(message: Message) -> Any:
    if message.DESCRIPTOR.full_name in _WELL_KNOWN_STRINGS:
        return message.ToJsonString()  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                out[field.name] = {str(k): _scalar(value_field, v) for k, v in value.items()}
            else:
                out[field.name] = [_scalar(field, v) for v in value]
        else:
            out[field.name] = _scalar(field, value)
    return out


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _message(value)
    if kind == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    if kind in _INT64:
        return str(value)
    if kind == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if kind in _FLOATS:
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if kind == FieldDescriptor.TYPE_FLOAT:
            return _shortest_float32(value)
    return value


def _shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (as ``MessageToJson``)."""
    single = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == single:
            return candidate
    return value
