"""Redis commands of concurrent callers, sent together: one round trip for many.

Every message costs a PUBLISH (fan-out) and a hot-cache write; sent one by
one, each pays a pooled connection, a write and a read of its own. Here a
command issued while an earlier round trip is under way waits for it to end
and then goes with every other command issued meanwhile, as one pipeline
(no transaction; on a Redis Cluster, redis-py sends one pipeline per node at
once and retries MOVED commands one by one, in order). Nothing waits for a
batch to fill: on an idle pod each command leaves at once. Commands go out
in the order they were issued, one round trip at a time, so two publishes on
one channel never overtake each other.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import ResponseError

from livedesk.platform.redis import AnyRedis

__all__ = ["CommandBatcher"]

_Waiting = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class CommandBatcher:
    """Sends ``execute`` calls to ``redis`` in pipelines of up to ``max_batch`` commands."""

    def __init__(self, redis: AnyRedis, *, timeout: float, max_batch: int = 1000) -> None:
        """``timeout`` bounds each round trip: past it, its callers get ``TimeoutError``."""
        self._redis = redis
        self._timeout = timeout
        self._max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._sender: asyncio.Task[None] | None = None
        self.round_trips = 0
        self.commands = 0

    async def execute(self, *args: Any) -> Any:
        """Run one command (``"PUBLISH", channel, data``): its reply, or its error raised."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                # A caller that gave up (timeout, cancel) no longer needs its command.
                batch = [w for w in batch if not w[1].done()]
                if batch:
                    await self._round_trip(batch)
        finally:
            self._sender = None

    async def _round_trip(self, batch: list[_Waiting]) -> None:
        self.round_trips += 1
        self.commands += len(batch)
        replies: list[Any]
        try:
            async with asyncio.timeout(self._timeout):
                if len(batch) == 1:
                    try:
                        replies = [await self._redis.execute_command(*batch[0][0])]
                    except ResponseError as exc:
                        replies = [exc]  # the command's own error, as a pipeline gives it
                else:
                    pipe = self._redis.pipeline(transaction=False)
                    for args, _ in batch:
                        pipe.execute_command(*args)
                    replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            replies = [exc] * len(batch)
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
