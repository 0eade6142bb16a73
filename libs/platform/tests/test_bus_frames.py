"""The publisher's own AMQP frame encoding is byte for byte what pamqp (aiormq) sends."""

from __future__ import annotations

import pamqp.frame
import pytest
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from livedesk.platform.bus.frames import PublishFrames
from livedesk.platform.bus.publisher import CONTENT_TYPE

EXCHANGE = "livedesk.events"
EVENT_ID = "0190b4a2-7c1e-7d3a-9f00-2b5c8e4d1a6f"


def pamqp_frames(channel: int, routing_key: str, body: bytes, max_body_frame: int) -> bytes:
    """What aiormq's basic_publish writes for the publisher's message."""
    frames: list[Basic.Publish | ContentHeader | ContentBody] = [
        Basic.Publish(exchange=EXCHANGE, routing_key=routing_key, mandatory=True),
        ContentHeader(
            body_size=len(body),
            properties=Basic.Properties(
                content_type=CONTENT_TYPE,
                delivery_mode=2,
                message_id=EVENT_ID,
                message_type=routing_key,
            ),
        ),
    ]
    frames += [
        ContentBody(body[i : i + max_body_frame]) for i in range(0, len(body), max_body_frame)
    ]
    return b"".join(pamqp.frame.marshal(f, channel) for f in frames)


@pytest.mark.parametrize(
    ("body", "max_body_frame"),
    [
        (b"\x0a\x24" + b"x" * 120, 131_064),  # one body frame
        (bytes(range(256)) * 40, 1000),  # spans eleven body frames, the last one short
        (b"y" * 2000, 1000),  # an exact multiple of the frame size
        (b"", 131_064),  # no body frame at all
    ],
)
def test_frames_match_pamqp(body: bytes, max_body_frame: int) -> None:
    frames = PublishFrames(EXCHANGE, CONTENT_TYPE)
    for channel, key in [(1, "conversation.assigned"), (7, "message.created")] * 2:  # cached
        out: list[bytes] = []
        frames.add(out, channel, max_body_frame, key, EVENT_ID, body)
        assert b"".join(out) == pamqp_frames(channel, key, body, max_body_frame)


def test_frames_of_many_events_are_their_concatenation() -> None:
    frames = PublishFrames(EXCHANGE, CONTENT_TYPE)
    out: list[bytes] = []
    frames.add(out, 3, 131_064, "conversation.assigned", EVENT_ID, b"first")
    frames.add(out, 3, 131_064, "conversation.queued", EVENT_ID, b"second")
    assert b"".join(out) == pamqp_frames(3, "conversation.assigned", b"first", 131_064) + (
        pamqp_frames(3, "conversation.queued", b"second", 131_064)
    )


def test_names_longer_than_a_short_string_are_refused() -> None:
    frames = PublishFrames(EXCHANGE, CONTENT_TYPE)
    with pytest.raises(ValueError, match="longer than 255"):
        frames.add([], 1, 131_064, "k" * 256, EVENT_ID, b"")
    with pytest.raises(ValueError, match="longer than 255"):
        frames.add([], 1, 131_064, "conversation.created", "i" * 256, b"")
