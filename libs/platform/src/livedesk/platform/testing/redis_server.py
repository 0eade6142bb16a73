"""A redis-server of one test's own, for tests that flush or kill Redis on purpose.

The shared Redis (db 0) is never flushed; a test that needs "Redis lost
everything" starts its own server on a free port with this and wipes that.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from livedesk.platform.testing.processes import free_port
from livedesk.platform.testing.waiting import wait_until

__all__ = ["private_redis"]


@asynccontextmanager
async def private_redis(directory: Path) -> AsyncIterator[str]:
    """Start ``redis-server`` (no persistence) on a free port; its URL; stopped on exit.

    Raises RuntimeError when ``redis-server`` is not installed (tests check
    ``shutil.which("redis-server")`` to skip instead).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(directory),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def accepting() -> bool:
            if proc.returncode is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await wait_until(accepting, timeout=10, what=f"redis-server on port {port}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
