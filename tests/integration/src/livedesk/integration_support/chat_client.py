"""A resilient chat client that follows docs/protocol.md to the letter.

It keeps the highest seq per conversation, fills gaps with ``fetch``,
resubscribes with ``after_seq`` after reconnecting, and resends unacknowledged
messages with their ``client_msg_id``. Tests use it to prove that the
protocol's promise holds: every committed message exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

__all__ = ["ChatClient"]


class ChatClient:
    """One participant; ``base_urls()`` says which pods to (re)connect to."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token: str,
        base_urls: Callable[[], list[str]],
        origin: str | None = None,
    ) -> None:
        self._session = session
        self._token = token
        self._base_urls = base_urls
        self._origin = origin
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.highest: dict[str, int] = {}
        self.messages: dict[str, dict[int, dict[str, Any]]] = {}
        self.pending: dict[str, tuple[str, str]] = {}  # client_msg_id -> (conversation, body)
        self.acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.subscribed: set[str] = set()
        self.connections = 0
        self.pod = ""  # the pod serving the current socket (from its hello frame)
        self.changed = asyncio.Event()
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self.reconnect_error: BaseException | None = None

    # --- connection ---------------------------------------------------------

    async def connect(self) -> None:
        """Open a socket on the first pod that takes one; resubscribe; resend pending."""
        last: Exception | None = None
        for base in self._base_urls():
            try:
                async with self._session.post(
                    f"{base}/api/v1/ws/tickets", headers={"Authorization": f"Bearer {self._token}"}
                ) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"ticket: {resp.status} {await resp.text()}")
                    ticket = (await resp.json())["ticket"]
                ws = await self._session.ws_connect(
                    f"{base}/ws?ticket={ticket}", origin=self._origin, heartbeat=5
                )
                break
            except (aiohttp.ClientError, RuntimeError, OSError) as exc:
                last = exc
        else:
            raise ConnectionError(f"no pod would take the socket: {last!r}")
        try:
            first = await ws.receive(timeout=10)
            if first.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"socket ended before its hello: {first.type!r}")
            hello = json.loads(first.data)
            if hello.get("type") != "hello":
                raise ConnectionError(f"first frame was not hello: {hello!r}")
        except BaseException:
            await ws.close()
            raise
        self._ws = ws
        self.connections += 1
        self.pod = hello.get("pod", "")
        self._reader = asyncio.create_task(self._read(ws))
        for conversation_id in list(self.subscribed):
            await self._send(
                {
                    "type": "subscribe",
                    "conversation_id": conversation_id,
                    "after_seq": self.highest.get(conversation_id, 0),
                }
            )
        for client_msg_id, (conversation_id, body) in list(self.pending.items()):
            await self._send(
                {
                    "type": "send",
                    "conversation_id": conversation_id,
                    "client_msg_id": client_msg_id,
                    "body": body,
                }
            )

    async def reconnect(self, give_up_after: float = 60.0) -> None:
        """Connect again, retrying until a pod answers or ``give_up_after`` seconds pass.

        Whatever went wrong last is kept in ``reconnect_error``: a client that
        gave up must say why in the failing test, not vanish in a dead task.
        """
        deadline = asyncio.get_running_loop().time() + give_up_after
        while True:
            try:
                await self.connect()
                self.reconnect_error = None
                return
            except Exception as exc:  # any failed attempt is retried, whatever it was
                self.reconnect_error = exc
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Leave for good."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _send(self, frame: dict[str, Any]) -> None:
        assert self._ws is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.send_str(json.dumps(frame))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            await self._on_frame(json.loads(msg.data))
        if not self._closing and ws is self._ws:
            self._reader = None
            self._reconnecting = asyncio.get_running_loop().create_task(self.reconnect())

    # --- protocol -------------------------------------------------------------

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "message":
            await self._keep(frame["message"])
        elif kind == "messages":
            for message in frame["messages"]:
                await self._keep(message)
            if frame.get("more"):
                await self._fetch(frame["conversation_id"])
        elif kind == "subscribed":
            if frame["last_seq"] > self.highest.get(frame["conversation_id"], 0):
                await self._fetch(frame["conversation_id"])
        elif kind == "ack":
            self.pending.pop(frame["client_msg_id"], None)
            future = self.acks.get(frame["client_msg_id"])
            if future is not None and not future.done():
                future.set_result(frame)
        elif kind == "resync":
            for conversation_id in self.subscribed:
                await self._fetch(conversation_id)
        self.changed.set()

    async def _keep(self, message: dict[str, Any]) -> None:
        conversation_id, seq = message["conversation_id"], message["seq"]
        have = self.messages.setdefault(conversation_id, {})
        if seq in have:
            return  # a duplicate: normal with at-most-once fan-out plus replay
        have[seq] = message
        highest = self.highest.get(conversation_id, 0)
        if seq > highest + 1:
            await self._fetch(conversation_id)  # a gap: ask for what is missing
        while self.highest.get(conversation_id, 0) + 1 in have:
            self.highest[conversation_id] = self.highest.get(conversation_id, 0) + 1

    async def _fetch(self, conversation_id: str) -> None:
        await self._send(
            {
                "type": "fetch",
                "conversation_id": conversation_id,
                "after_seq": self.highest.get(conversation_id, 0),
                "limit": 500,
            }
        )

    async def subscribe(self, conversation_id: str) -> None:
        """Follow a conversation from its beginning (or where we are)."""
        self.subscribed.add(conversation_id)
        await self._send(
            {
                "type": "subscribe",
                "conversation_id": conversation_id,
                "after_seq": self.highest.get(conversation_id, 0),
            }
        )

    async def send(self, conversation_id: str, body: str, timeout: float = 30) -> dict[str, Any]:
        """Send until acknowledged (across reconnects); the ack frame."""
        client_msg_id = uuid.uuid4().hex
        self.pending[client_msg_id] = (conversation_id, body)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.acks[client_msg_id] = future
        await self._send(
            {
                "type": "send",
                "conversation_id": conversation_id,
                "client_msg_id": client_msg_id,
                "body": body,
            }
        )
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            self.acks.pop(client_msg_id, None)

    def seqs(self, conversation_id: str) -> list[int]:
        """The seqs this client holds for a conversation, in order."""
        return sorted(self.messages.get(conversation_id, {}))

    def bodies(self, conversation_id: str) -> list[str]:
        """The message bodies, in seq order."""
        have = self.messages.get(conversation_id, {})
        return [have[s]["body"] for s in sorted(have)]
