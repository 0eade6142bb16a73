"""Acknowledging settled deliveries in batches: one ``basic.ack`` frame for many.

An ack per delivery costs the client (and the broker) about as much as the
delivery itself. The consumer hands every delivery it has settled here (its
handler finished and what it did is durable, or its retry/dead-letter copy is
confirmed); the batcher acks them a few milliseconds later, together.

Safety: ``basic.ack`` with ``multiple=True`` acks *every* unacked delivery of
the channel up to the tag, including ones still being handled. So the
watermark only moves over a contiguous run of tags settled here (delivery
tags count 1, 2, 3 … per channel), and the frame carries the highest tag of
that run not yet acked. A tag settled above a gap (a slower handler below it)
waits for the gap to close; if it has waited ``max_delay`` already when a
flush comes, it is acked alone (``multiple=False``), so one slow handler
never stalls the window. Delivery tags belong to one channel:
state is kept per channel, and a channel that closed with acks pending is
forgotten; the broker redelivers those deliveries, and the handlers'
idempotency absorbs the repeat.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiormq.abc import AbstractChannel, DeliveredMessage

from livedesk.platform.logging import get_logger

__all__ = ["AckBatcher"]

log = get_logger("livedesk.bus.acks")


@dataclass
class _ChannelAcks:
    """Settlement state of one channel's delivery tags."""

    floor: int = 0
    """Every tag up to this one is settled and needs nothing more."""
    settled: set[int] = field(default_factory=set)
    """Settled tags above ``floor`` (acked singly, nacked, or in ``to_ack``)."""
    to_ack: dict[int, float] = field(default_factory=dict)
    """Settled tags not acked yet -> when they were settled (loop time)."""

    def take(self, older_than: float, force: bool) -> tuple[int, int, list[int]]:
        """The tag to ack with ``multiple=True`` (0: none), how many deliveries that
        frame acks, and the tags to ack singly."""
        run = self.floor
        while run + 1 in self.settled:
            run += 1
            self.settled.discard(run)
        self.floor = run
        covered = [t for t in self.to_ack if t <= run]
        for tag in covered:
            del self.to_ack[tag]
        # Above a gap: ack alone what has waited max_delay already (or all, when forced).
        singles = sorted(t for t, at in self.to_ack.items() if force or at <= older_than)
        for tag in singles:
            del self.to_ack[tag]
        return max(covered, default=0), len(covered), singles


class AckBatcher:
    """Collects settled deliveries and acks them together.

    Args:
        max_delay: seconds a settled delivery may wait for its ack.
        flush_at: settled deliveries waiting that make a flush happen at once
            (half the prefetch window: the broker sends no more while the
            window is full of deliveries that are done but unacked).
    """

    def __init__(self, *, max_delay: float = 0.005, flush_at: int = 32) -> None:
        self._max_delay = max_delay
        self._flush_at = max(1, flush_at)
        self._channels: dict[AbstractChannel, _ChannelAcks] = {}
        self._waiting = 0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._force = False
        self.acked = 0
        """Deliveries acked so far (each exactly once)."""
        self.frames = 0
        """``basic.ack`` frames sent so far."""

    def ack(self, message: DeliveredMessage) -> None:
        """``message`` is settled and may be acked (soon)."""
        state = self._state(message)
        if state is None:
            return
        assert message.delivery_tag is not None
        state.settled.add(message.delivery_tag)
        state.to_ack[message.delivery_tag] = asyncio.get_running_loop().time()
        self._waiting += 1
        if self._waiting >= self._flush_at:
            self.flush_soon()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_delay, self._kick)

    def settled_elsewhere(self, message: DeliveredMessage) -> None:
        """``message`` was settled without an ack (nacked): the watermark may pass it."""
        state = self._state(message)
        if state is not None:
            assert message.delivery_tag is not None
            state.settled.add(message.delivery_tag)

    def flush_soon(self) -> None:
        """Ack what can be acked now, without waiting for the delay (e.g. when idle)."""
        if self._waiting:
            self._kick()

    async def flush(self) -> None:
        """Ack everything settled, out-of-order tags singly (on shutdown)."""
        self._force = True
        self._kick()
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def _state(self, message: DeliveredMessage) -> _ChannelAcks | None:
        channel = message.channel
        if channel.is_closed:
            return None  # its channel is gone: the broker redelivers it
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _ChannelAcks()
        return state

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_rounds(), name="bus-acks")
        else:
            self._again = True

    async def _flush_rounds(self) -> None:
        # One flusher at a time: frames of a channel leave in tag order.
        self._again = True
        while self._again:
            self._again = False
            force, self._force = self._force, False
            await self._flush_round(force)

    async def _flush_round(self, force: bool) -> None:
        # Take every channel's batch before the first await: settlements arriving
        # while frames are sent belong to the next round.
        plans: list[tuple[AbstractChannel, int, int, list[int]]] = []
        older_than = asyncio.get_running_loop().time() - self._max_delay
        for channel, state in list(self._channels.items()):
            if channel.is_closed:
                self._forget(channel, len(state.to_ack))
                continue
            top, covered, singles = state.take(older_than, force)
            if top or singles:
                plans.append((channel, top, covered, singles))
        self._waiting = sum(len(s.to_ack) for s in self._channels.values())
        for channel, top, covered, singles in plans:
            try:
                if top:
                    await channel.basic_ack(top, multiple=True)
                    self.frames += 1
                    self.acked += covered
                for tag in singles:
                    await channel.basic_ack(tag)
                    self.frames += 1
                    self.acked += 1
            except Exception as exc:  # the channel closed under us: redelivery follows
                self._forget(channel, covered + len(singles), repr(exc))
        self._waiting = sum(len(s.to_ack) for s in self._channels.values())
        if self._waiting and self._timer is None:
            # Tags above a gap: look again after the delay, and ack them alone if it is open.
            self._timer = asyncio.get_running_loop().call_later(self._max_delay, self._kick)

    def _forget(self, channel: AbstractChannel, unacked: int, error: str = "") -> None:
        self._channels.pop(channel, None)
        if unacked:
            log.warning("bus_acks_lost_with_channel", deliveries=unacked, error=error)
