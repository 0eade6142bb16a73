"""Coalescing concurrent calls per key into batches (one round trip for many callers).

Callers of :meth:`Coalescer.submit` get the result of the batch their item
went in. While fewer than ``max_in_flight`` batches of a key are running, an
item starts a batch at once (after the current turn of the event loop, so
callers woken together share it); otherwise it waits and joins the next batch,
which therefore grows with the load: no added latency when idle, fewer and
larger round trips when busy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Key(Generic[T, R]):
    pending: list[tuple[T, asyncio.Future[R]]] = field(default_factory=list)
    running: int = 0
    starting: bool = False


class Coalescer(Generic[T, R]):
    """Runs ``run(key, items)`` for batches of submitted items, per key."""

    def __init__(
        self,
        run: Callable[[str, Sequence[T]], Awaitable[R]],
        *,
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        self._run = run
        self._max_batch = max(1, max_batch)
        self._max_in_flight = max(1, max_in_flight)
        self._keys: dict[str, _Key[T, R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.items = 0

    async def submit(self, key: str, item: T) -> R:
        """Run ``item`` in a batch of ``key``; that batch's result (or its exception)."""
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        state.pending.append((item, future))
        self._maybe_start(key, state)
        return await future

    def _maybe_start(self, key: str, state: _Key[T, R]) -> None:
        """Start a worker unless one is about to take the pending items or enough run."""
        if state.pending and not state.starting and state.running < self._max_in_flight:
            state.starting = True
            state.running += 1
            task = asyncio.create_task(self._worker(key, state), name=f"coalesce:{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _worker(self, key: str, state: _Key[T, R]) -> None:
        try:
            # Let the callers woken in this turn of the loop submit first: they share the batch.
            await asyncio.sleep(0)
            while state.pending:
                batch = state.pending[: self._max_batch]
                del state.pending[: self._max_batch]
                state.starting = False
                self._maybe_start(key, state)  # more than a batch waits: run it alongside
                self.batches += 1
                self.items += len(batch)
                try:
                    result = await self._run(key, [item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(result)
        finally:
            state.running -= 1
            if state.starting and state.running == 0:
                state.starting = False
            if state.running == 0 and not state.pending and self._keys.get(key) is state:
                del self._keys[key]

    async def close(self) -> None:
        """Cancel the batches in flight (their callers get CancelledError)."""
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for state in self._keys.values():
            for _, future in state.pending:
                future.cancel()
        self._keys.clear()
