"""AMQP 0-9-1 frames of a persistent, mandatory ``basic.publish``, encoded in bulk.

aiormq marshals every publish with pamqp's general-purpose encoder and hands
each to its writer task on its own: in a relay round of thousands of events
that was ~70 µs of client CPU per event, and a socket write per event that the
broker then reads one by one (``services/assignment/bench/amqp_acks.py``). The
publisher's events differ only in routing key, message id and body, so the
frames are built here from a cached method frame and a few ``struct`` packs,
and many events go to the connection's writer as one buffer. The encoding is
checked byte for byte against pamqp's in the tests.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["PublishFrames"]

_FRAME_END: Final = b"\xce"
_FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC = 60
_BASIC_PUBLISH = 40
# basic.publish: class, method, reserved short (ticket); then exchange, routing key, bits.
_PUBLISH_HEAD = struct.Struct(">HHH")
_MANDATORY = b"\x01"
# Content header: class, weight, body size, property flags; the properties follow in
# flag order: content-type (bit 15), delivery-mode (12), message-id (7), type (5).
_CONTENT_HEAD = struct.Struct(">HHQH")
_PROPERTY_FLAGS: Final = (1 << 15) | (1 << 12) | (1 << 7) | (1 << 5)
_PERSISTENT = b"\x02"
_MAX_SHORT_STR = 255


def _short_str(value: bytes) -> bytes:
    if len(value) > _MAX_SHORT_STR:
        raise ValueError(f"{value[:40]!r}… is longer than {_MAX_SHORT_STR} bytes")
    return bytes((len(value),)) + value


class PublishFrames:
    """Encodes publishes to one exchange: method, content header and body frames.

    Args:
        exchange: the exchange every publish goes to.
        content_type: the content-type property of every message.
    """

    def __init__(self, exchange: str, content_type: str) -> None:
        self._exchange = _short_str(exchange.encode())
        self._content_type = _short_str(content_type.encode())
        self._methods: dict[tuple[int, str], bytes] = {}

    def add(
        self,
        out: list[bytes],
        channel: int,
        max_body_frame: int,
        routing_key: str,
        message_id: str,
        body: bytes,
    ) -> None:
        """Append the frames publishing ``body`` (persistent, mandatory) to ``out``.

        ``max_body_frame`` is the largest body frame payload the connection allows
        (``frame_max`` minus the frame overhead); longer bodies span several frames.
        The message's ``type`` property is its routing key, as for every event.

        Raises:
            ValueError: the routing key or message id is longer than 255 bytes.
        """
        key = _short_str(routing_key.encode())
        method = self._methods.get((channel, routing_key))
        if method is None:
            payload = (
                _PUBLISH_HEAD.pack(_BASIC, _BASIC_PUBLISH, 0) + self._exchange + key + _MANDATORY
            )
            method = _FRAME_HEAD.pack(_METHOD, channel, len(payload)) + payload + _FRAME_END
            self._methods[(channel, routing_key)] = method
        properties = self._content_type + _PERSISTENT + _short_str(message_id.encode()) + key
        header = _CONTENT_HEAD.pack(_BASIC, 0, len(body), _PROPERTY_FLAGS) + properties
        out.append(method)
        out.append(_FRAME_HEAD.pack(_HEADER, channel, len(header)) + header + _FRAME_END)
        for start in range(0, len(body), max_body_frame):
            chunk = body[start : start + max_body_frame]
            out.append(_FRAME_HEAD.pack(_BODY, channel, len(chunk)))
            out.append(chunk)
            out.append(_FRAME_END)
