"""How far ingestion is behind: the queue's depth, polled from RabbitMQ.

The other half of the lag, the age of the oldest event delivered but not yet
stored, is kept by :class:`~livedesk.analytics.ingest.EventIngestor` as it
works. Both are Prometheus gauges (see :mod:`livedesk.analytics.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from livedesk.analytics.metrics import QUEUE_MESSAGES
from livedesk.platform.logging import get_logger
from livedesk.platform.tasks import cancel_and_wait

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractRobustConnection

__all__ = ["QueueDepthMonitor"]

log = get_logger("livedesk.analytics.lag")


class QueueDepthMonitor:
    """Reads the message count of ``queue_name`` every ``interval`` seconds.

    Uses a passive declare on a channel of its own, so it never creates the
    queue nor disturbs the consumer's channel.
    """

    def __init__(
        self, connection: AbstractRobustConnection, queue_name: str, interval: float
    ) -> None:
        self._connection = connection
        self._queue_name = queue_name
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._channel: AbstractChannel | None = None
        self.last: int | None = None
        """The depth read last; None before the first read."""

    async def poll(self) -> int:
        """Read the depth now, update the gauge, and return it."""
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel()
        # The raw channel: aio-pika's robust channel caches a declared queue and
        # would answer every later passive declare with the first count.
        raw = await self._channel.get_underlay_channel()
        result = await raw.queue_declare(self._queue_name, passive=True)
        depth = result.message_count or 0
        QUEUE_MESSAGES.set(depth)
        self.last = depth
        return depth

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._channel = None
                log.warning("queue_depth_unavailable", queue=self._queue_name, error=repr(exc))
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        """Start polling in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="analytics-lag")

    async def stop(self) -> None:
        """Stop polling and close the channel."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
