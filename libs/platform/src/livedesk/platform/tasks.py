"""Background asyncio tasks: stopping one."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished unwinding (its cancellation is not raised)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
