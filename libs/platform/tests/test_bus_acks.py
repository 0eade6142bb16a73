"""Which delivery tags a batched ack may cover (pure logic of the watermark)."""

from __future__ import annotations

from livedesk.platform.bus.acks import _ChannelAcks


def settle(state: _ChannelAcks, *tags: int, at: float = 0.0) -> None:
    for tag in tags:
        state.settled.add(tag)
        state.to_ack[tag] = at


def test_contiguous_run_is_acked_with_one_multiple_frame() -> None:
    state = _ChannelAcks()
    settle(state, 3, 1, 2)
    assert state.take(older_than=-1.0, force=False) == (3, 3, [])
    assert state.floor == 3
    assert not state.to_ack
    assert not state.settled


def test_watermark_stops_below_an_unfinished_tag() -> None:
    state = _ChannelAcks()
    settle(state, 1, 2, 4, 5)  # 3 is still being handled
    assert state.take(older_than=-1.0, force=False) == (2, 2, [])
    assert sorted(state.to_ack) == [4, 5]  # not acked: a multiple ack of 5 would ack 3 too
    settle(state, 3)
    assert state.take(older_than=-1.0, force=False) == (5, 3, [])
    assert state.floor == 5


def test_tags_waiting_above_a_gap_too_long_are_acked_singly() -> None:
    state = _ChannelAcks()
    settle(state, 2, at=1.0)
    settle(state, 3, at=5.0)
    top, covered, singles = state.take(older_than=2.0, force=False)
    assert (top, covered, singles) == (0, 0, [2])  # 3 is young enough to wait
    assert list(state.to_ack) == [3]
    # 2 stays "settled": once 1 is done the watermark passes it without acking it again.
    settle(state, 1)
    assert state.take(older_than=2.0, force=False) == (3, 2, [])
    assert state.floor == 3


def test_nacked_tag_lets_the_watermark_pass_without_being_acked() -> None:
    state = _ChannelAcks()
    settle(state, 1, 3)
    state.settled.add(2)  # nacked (requeued) elsewhere
    assert state.take(older_than=-1.0, force=False) == (3, 2, [])


def test_top_of_run_already_acked_singly_is_not_sent_again() -> None:
    state = _ChannelAcks()
    settle(state, 3, at=0.0)
    assert state.take(older_than=1.0, force=False) == (0, 0, [3])
    settle(state, 1, 2, at=2.0)
    # 3 was acked alone: the frame must name 2, not 3 (an unknown tag closes the channel).
    assert state.take(older_than=1.0, force=False) == (2, 2, [])
    assert state.floor == 3


def test_forced_flush_acks_everything_settled() -> None:
    state = _ChannelAcks()
    settle(state, 1, 4, 6, at=10.0)
    assert state.take(older_than=0.0, force=True) == (1, 1, [4, 6])
    assert not state.to_ack
