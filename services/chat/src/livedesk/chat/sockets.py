"""One WebSocket connection: a bounded send queue with its own writer, and the registry.

A slow client can never stall a fan-out loop or grow the pod's memory: frames
go into a bounded queue that one writer task drains; when the queue is full
the client is disconnected (close code 4008) and resumes by seq on reconnect.
The usual case skips the queue: a frame for a socket with nothing queued and
room in its transport's buffer is written at once, without a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections import defaultdict, deque

from aiohttp import web

from livedesk.chat.access import Principal
from livedesk.chat.ratelimit import TokenBucket
from livedesk.platform.logging import get_logger
from livedesk.platform.tasks import cancel_and_wait

__all__ = ["CLOSE_INTERNAL", "CLOSE_RESTART", "CLOSE_SLOW", "ClientSocket", "SocketRegistry"]

log = get_logger("livedesk.chat.sockets")

CLOSE_RESTART = 1012  # the server restarts: reconnect (to another pod)
CLOSE_POLICY = 1008  # flooding or other abuse
CLOSE_INTERNAL = 1011  # the server failed on something it did not expect
CLOSE_SLOW = 4008  # the client did not read its frames fast enough

WRITE_BUFFER_LIMIT = 64 * 1024
"""Bytes a transport may hold unsent before frames wait in the queue for it to drain."""


def text_frame(data: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (RFC 6455 5.2: servers do not mask)."""
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + data
    return struct.pack("!BBQ", 0x81, 127, size) + data


class ClientSocket:
    """A connected, authenticated client."""

    # Thousands live per pod: no per-instance __dict__.
    __slots__ = (
        "_closer",
        "_closing",
        "_limit",
        "_pending",
        "_transport",
        "_writer",
        "bucket",
        "channels",
        "principal",
        "subscriptions",
        "team_ids",
        "user_bucket",
        "violations",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        principal: Principal,
        queue_size: int,
        bucket: TokenBucket,
        user_bucket: TokenBucket,
        transport: asyncio.Transport | None = None,
    ) -> None:
        """``transport``: the connection's, for writes that need no queue (None: always queue)."""
        self.ws = ws
        self._transport = transport
        self.principal = principal
        self.bucket = bucket
        self.user_bucket = user_bucket
        self.team_ids: list[uuid.UUID] = []
        # Lists, not sets: a socket listens on one to a few channels, and an
        # empty set alone costs 216 bytes (a list of one item about 90).
        self.channels: list[str] = []
        self.subscriptions: list[uuid.UUID] = []
        self.violations = 0
        # Frames waiting to be written, and the writer task that exists only while
        # there are some: an idle socket costs no task, no future, no queue.
        self._pending: deque[str] | None = None
        self._limit = queue_size
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._closer: asyncio.Task[None] | None = None

    def deliver(self, frame: str) -> None:
        """Queue a frame for this client; disconnect it if it has fallen too far behind."""
        if self._closing:
            return
        if self._writer is None and self._write_now(frame):
            return
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        if len(pending) >= self._limit:
            log.warning("ws_slow_consumer", socket=id(self), subject=str(self.principal.subject_id))
            self.close_soon(CLOSE_SLOW, "too slow: reconnect and resume")
            return
        pending.append(frame)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def _write_now(self, frame: str) -> bool:
        """Write ``frame`` if nothing is queued before it and the transport has room."""
        transport = self._transport
        if (
            transport is None
            or self.ws.closed
            or transport.is_closing()
            or transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT
        ):
            return False
        # One write of a whole frame: it cannot interleave with aiohttp's own
        # frames (pings, close), which it also writes whole.
        transport.write(text_frame(frame.encode()))
        return True

    def allow(self) -> bool:
        """Spend a rate token for a client frame (per connection and per user)."""
        return self.bucket.take() and self.user_bucket.take()

    async def _write(self) -> None:
        # One writer at a time keeps frames in order; it ends when nothing is left
        # (deliver() cannot run between the last check and the reset: no await there).
        pending = self._pending
        try:
            while pending:
                await self.ws.send_str(pending.popleft())
        except (ConnectionError, RuntimeError):
            pass  # the peer went away; the reader notices and cleans up
        finally:
            self._writer = None
            self._pending = None  # an empty deque still holds a 64-slot block

    def close_soon(self, code: int, reason: str, *, flush: bool = False) -> None:
        """Close with ``code`` without waiting here; ``flush`` first sends what is queued."""
        if self._closing:
            return
        if flush:
            self._closer = asyncio.get_running_loop().create_task(
                self.flush_and_close(code, reason)
            )
            return
        self._closing = True
        self._pending = None
        if self._writer is not None:
            self._writer.cancel()
        self._closer = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.CancelledError):
            await self.ws.close(code=code, message=reason.encode())

    async def flush_and_close(self, code: int, reason: str, timeout: float = 2.0) -> None:
        """Send what is queued (within ``timeout``), then close with ``code``."""
        if not self._closing:
            self._closing = True
            writer = self._writer
            if writer is not None:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(writer), timeout)
        await self._close(code, reason)

    async def stop_writer(self) -> None:
        """End the writer task (the socket is gone)."""
        self._closing = True
        self._pending = None
        writer = self._writer
        if writer is not None:
            await cancel_and_wait(writer)


class SocketRegistry:
    """Every socket of this pod: connection limits, per-user rate buckets, draining."""

    def __init__(self, per_user: int, user_rate: float, user_burst: int) -> None:
        self.per_user = per_user
        self._user_rate = user_rate
        self._user_burst = user_burst
        self.sockets: set[ClientSocket] = set()
        # Sockets per user: a count, not a set per user (most users have one socket).
        self._by_user: dict[uuid.UUID, int] = {}
        self._user_buckets: dict[uuid.UUID, TokenBucket] = {}
        self.draining = False

    def has_room(self, principal: Principal) -> bool:
        """True when this user may open another socket here."""
        return self._by_user.get(principal.subject_id, 0) < self.per_user

    def user_bucket(self, principal: Principal) -> TokenBucket:
        """The rate bucket shared by all of this user's sockets on this pod."""
        bucket = self._user_buckets.get(principal.subject_id)
        if bucket is None:
            bucket = TokenBucket(self._user_rate, self._user_burst)
            self._user_buckets[principal.subject_id] = bucket
        return bucket

    def add(self, socket: ClientSocket) -> None:
        """Register a new socket."""
        if socket not in self.sockets:
            self.sockets.add(socket)
            user = socket.principal.subject_id
            self._by_user[user] = self._by_user.get(user, 0) + 1

    def remove(self, socket: ClientSocket) -> None:
        """Forget a closed socket."""
        if socket not in self.sockets:
            return
        self.sockets.discard(socket)
        user = socket.principal.subject_id
        left = self._by_user.get(user, 1) - 1
        if left > 0:
            self._by_user[user] = left
        else:
            self._by_user.pop(user, None)
            self._user_buckets.pop(user, None)

    def staff_online(self) -> dict[uuid.UUID, set[uuid.UUID]]:
        """Agents and admins with a live console here, by tenant."""
        out: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
        for socket in self.sockets:
            if socket.principal.is_staff:
                out[socket.principal.tenant_id].add(socket.principal.subject_id)
        return out

    async def drain(self, timeout: float) -> None:
        """Tell every client to reconnect elsewhere and close them (code 1012)."""
        self.draining = True
        reconnect = '{"type":"reconnect","reason":"server restarting"}'
        for socket in list(self.sockets):
            socket.deliver(reconnect)
        await asyncio.gather(
            *(s.flush_and_close(CLOSE_RESTART, "server restarting", timeout) for s in self.sockets),
            return_exceptions=True,
        )
