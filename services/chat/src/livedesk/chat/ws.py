"""The WebSocket endpoint: ``GET /ws?ticket=...`` (protocol in docs/protocol.md)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import orjson
from aiohttp import WSMsgType, web
from prometheus_client import Histogram
from pydantic import ValidationError

from livedesk.chat.access import Principal
from livedesk.chat.actions import ChatActions
from livedesk.chat.api_auth import origin_allowed
from livedesk.chat.api_support import validation_message
from livedesk.chat.errors import ChatError, Invalid, from_database
from livedesk.chat.fanout import console_channels, conversation_channel
from livedesk.chat.frames import dumps, error_frame, message_json
from livedesk.chat.models import Message
from livedesk.chat.protocol import (
    CLIENT_FRAME,
    Fetch,
    Ping,
    Presence,
    Read,
    Send,
    Subscribe,
    Typing,
    Unsubscribe,
)
from livedesk.chat.ratelimit import TokenBucket
from livedesk.chat.settings import ChatSettings
from livedesk.chat.sockets import CLOSE_INTERNAL, CLOSE_POLICY, ClientSocket, SocketRegistry
from livedesk.platform.auth import TokenError, TokenVerifier
from livedesk.platform.http import error_response
from livedesk.platform.logging import get_logger
from livedesk.platform.redis import AnyRedis
from livedesk.platform.tracing import trace_context

__all__ = ["WS_KEY", "WsContext", "websocket"]

log = get_logger("livedesk.chat.ws")

SEND_SECONDS = Histogram(
    "livedesk_chat_send_seconds",
    "From a send frame parsed to its ack written: validation, commit and ack.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

PresenceHook = Callable[[Principal, str], Awaitable[None]]


@dataclass
class WsContext:
    """What the endpoint needs."""

    settings: ChatSettings
    actions: ChatActions
    registry: SocketRegistry
    verifier: TokenVerifier
    redis: AnyRedis  # one server or a cluster: the ticket is one key
    on_presence: PresenceHook | None = None
    pod_id: str = ""


WS_KEY = web.AppKey("ws", WsContext)


async def _authenticate(request: web.Request, ctx: WsContext) -> Principal | web.Response:
    # From the raw target, not request.query: that caches a parsed URL and a
    # query dict (~0.5 KB) on the request, which lives as long as the socket.
    ticket = parse_qs(request.raw_path.partition("?")[2]).get("ticket", [""])[0]
    try:
        # Single-use: remembering it would only crowd reusable tokens out of the cache.
        claims = ctx.verifier.verify(ticket, expected_type="ws_ticket", remember=False)
    except TokenError as exc:
        return error_response(401, "unauthorized", exc.reason)
    # Tickets are single-use: a ticket seen in a log or a proxy cannot be replayed.
    fresh = await ctx.redis.set(
        f"ld:ticket:{claims.token_id}", 1, nx=True, ex=ctx.settings.ws_ticket_ttl + 60
    )
    if not fresh:
        return error_response(401, "unauthorized", "ticket already used")
    try:
        principal = Principal(uuid.UUID(claims.tenant_id), uuid.UUID(claims.subject), claims.role)
    except ValueError:
        return error_response(401, "unauthorized", "invalid ticket")
    if principal.role == "visitor":
        visitor = await ctx.actions.directory.visitor(principal.tenant_id, principal.subject_id)
        inbox = await ctx.actions.directory.inbox(principal.tenant_id, visitor.inbox_id)
        if not origin_allowed(request.headers.get("Origin"), inbox.allowed_origins):
            return error_response(403, "forbidden", "this website may not use this inbox")
    return principal


async def websocket(request: web.Request) -> web.StreamResponse:
    """Authenticate the handshake and upgrade; the socket is served after this returns.

    Refusals and errors up to the upgrade go through the middlewares as any
    request's do. The frames are served from :meth:`_ServedSocket.write_eof`,
    which aiohttp calls once the handler (and the middleware chain around it)
    has returned, so none of their coroutine frames stays on the stack for
    the socket's life.
    """
    ctx = request.app[WS_KEY]
    if ctx.registry.draining:
        return error_response(503, "draining", "server restarting: connect again")
    authenticated = await _authenticate(request, ctx)
    if isinstance(authenticated, web.Response):
        return authenticated
    principal = authenticated
    if not ctx.registry.has_room(principal):
        return error_response(429, "rate_limited", "too many connections for this user")

    settings = ctx.settings
    ws = _ServedSocket(
        heartbeat=settings.ws_heartbeat,
        max_msg_size=settings.ws_max_frame_bytes,
        compress=False,
    )
    await ws.prepare(request)
    socket = ClientSocket(
        ws,
        principal,
        settings.ws_send_queue,
        TokenBucket(settings.ws_messages_per_second, settings.ws_message_burst),
        ctx.registry.user_bucket(principal),
        request.transport,
    )
    ws.session = _Session(ctx, socket)
    return ws


# aiohttp's WebSocketResponse attributes that start as class defaults and are
# set on the instance later (heartbeat timers, close state). Once one class's
# instances have set more than 30 distinct attributes, CPython stops sharing
# their key table and every socket's __dict__ grows from ~0.3 KB to ~1.6 KB;
# kept in slots instead, the __dict__ stays well under that limit.
_LAZY_ATTRIBUTES = (
    "_ws_protocol",
    "_writer",
    "_reader",
    "_parser",
    "_closed",
    "_closing",
    "_conn_lost",
    "_close_code",
    "_loop",
    "_waiting",
    "_close_wait",
    "_exception",
    "_heartbeat_when",
    "_heartbeat_cb",
    "_pong_response_cb",
    "_ping_task",
    "_need_heartbeat_reset",
    "_heartbeat_reset_handle",
)


class _ServedSocket(web.WebSocketResponse):
    """A WebSocket whose frames are served when aiohttp finishes the response."""

    __slots__ = ("session", *_LAZY_ATTRIBUTES)

    session: _Session | None

    def __init__(self, **kwargs: Any) -> None:
        for name in _LAZY_ATTRIBUTES:  # a slot has no class default to fall back on
            setattr(self, name, getattr(web.WebSocketResponse, name))
        self.session = None
        super().__init__(**kwargs)

    async def write_eof(self) -> None:  # type: ignore[override]  # as aiohttp's own
        session, self.session = self.session, None
        if session is not None:
            await session.serve()
        await super().write_eof()


class _Session:
    """Frame handling for one socket."""

    __slots__ = ("actions", "ctx", "hub", "principal", "socket")

    def __init__(self, ctx: WsContext, socket: ClientSocket) -> None:
        self.ctx = ctx
        self.socket = socket
        self.principal = socket.principal
        self.actions = ctx.actions
        self.hub = ctx.actions.hub

    async def serve(self) -> None:
        """Serve frames until the client leaves; an unexpected error closes with 1011."""
        socket, registry = self.socket, self.ctx.registry
        registry.add(socket)  # before this coroutine first awaits: a cancelled one never leaks
        try:
            await self.start()
            ws = socket.ws
            while True:  # receive() directly: no __anext__ coroutine held per socket
                msg = await ws.receive()
                if msg.type == WSMsgType.TEXT:
                    await self.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    socket.deliver(error_frame("bad_frame", "frames are JSON text"))
                else:
                    break
        except Exception:
            # After the upgrade there is no HTTP response left to turn this into.
            log.exception("ws_unhandled_error", subject=str(self.principal.subject_id))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await socket.ws.close(code=CLOSE_INTERNAL, message=b"internal error")
        finally:
            registry.remove(socket)
            await self.close()

    async def start(self) -> None:
        self.socket.team_ids = await self.actions.team_ids(self.principal)
        # hello first (docs/protocol.md): a console event published while the
        # channels below are being joined is delivered at once, and must follow it.
        self.socket.deliver(
            dumps(
                {
                    "type": "hello",
                    "role": self.principal.role,
                    "subject_id": str(self.principal.subject_id),
                    "tenant_id": str(self.principal.tenant_id),
                    "heartbeat": self.ctx.settings.ws_heartbeat,
                    "pod": self.ctx.pod_id,
                }
            )
        )
        if self.principal.is_staff:
            for channel in console_channels(
                self.principal.tenant_id,
                self.principal.role,
                self.principal.subject_id,
                self.socket.team_ids,
            ):
                await self._join(channel)

    async def _join(self, channel: str) -> None:
        if channel not in self.socket.channels:
            self.socket.channels.append(channel)
            await self.hub.join(channel, self.socket)

    async def _leave(self, channel: str) -> None:
        if channel in self.socket.channels:
            self.socket.channels.remove(channel)
            await self.hub.leave(channel, self.socket)

    async def close(self) -> None:
        for channel in list(self.socket.channels):
            await self._leave(channel)
        await self.socket.stop_writer()

    async def handle(self, text: str) -> None:
        ref: str | None = None
        try:
            raw: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.socket.deliver(error_frame("bad_frame", "frame is not valid JSON"))
            return
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            ref = raw["id"][:64]
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            self.socket.deliver(error_frame("bad_frame", "a frame is an object with a type", ref))
            return
        if not self.socket.allow():
            self.socket.violations += 1
            self.socket.deliver(error_frame("rate_limited", "slow down", ref))
            if self.socket.violations > 3 * self.socket.bucket.burst:
                self.socket.close_soon(CLOSE_POLICY, "flooding", flush=True)
            return
        try:
            frame = CLIENT_FRAME.validate_python(raw)
        except ValidationError as exc:
            code = (
                "unknown_type"
                if any(e["type"] == "union_tag_invalid" for e in exc.errors())
                else "invalid"
            )
            self.socket.deliver(error_frame(code, validation_message(exc), ref))
            return
        try:
            with trace_context(None):  # one trace per operation: events and logs follow it
                await self._dispatch(frame)
        except ChatError as exc:
            self.socket.deliver(error_frame(exc.code, exc.message, ref))
        except asyncpg.PostgresError as exc:
            error = from_database(exc)
            if error is None:
                raise
            self.socket.deliver(error_frame(error.code, error.message, ref))

    async def _dispatch(self, frame: object) -> None:
        match frame:
            case Send():
                await self._send(frame)
            case Subscribe():
                await self._subscribe(frame)
            case Fetch():
                await self._fetch(frame)
            case Typing():
                await self._typing(frame)
            case Read():
                await self.actions.mark_read(
                    self.principal, frame.conversation_id, frame.seq, self.socket.team_ids
                )
            case Unsubscribe():
                if frame.conversation_id in self.socket.subscriptions:
                    self.socket.subscriptions.remove(frame.conversation_id)
                await self._leave(conversation_channel(frame.conversation_id))
            case Ping():
                self.socket.deliver(dumps({"type": "pong", "ref": frame.id}))
            case Presence():
                await self._presence(frame)

    async def _send(self, frame: Send) -> None:
        started = time.perf_counter()

        def ack(message: Message, created: bool) -> None:
            self.socket.deliver(
                dumps(
                    {
                        "type": "ack",
                        "ref": frame.id,
                        "client_msg_id": frame.client_msg_id,
                        "conversation_id": str(message.conversation_id),
                        "message_id": str(message.id),
                        "seq": message.seq,
                        "created_at": message.created_at.isoformat(),
                        "duplicate": not created,
                    }
                )
            )
            SEND_SECONDS.observe(time.perf_counter() - started)

        await self.actions.send(
            self.principal,
            frame.conversation_id,
            frame.body,
            frame.client_msg_id,
            self.socket.team_ids,
            committed=ack,
        )

    async def _subscribe(self, frame: Subscribe) -> None:
        conversation = await self.actions.visible(
            self.principal, frame.conversation_id, self.socket.team_ids
        )
        # Listen first, then replay: whatever commits in between arrives twice
        # at worst (the client drops seqs it has), never not at all.
        await self._join(conversation_channel(conversation.id))
        if conversation.id not in self.socket.subscriptions:
            self.socket.subscriptions.append(conversation.id)
        limit = self.ctx.settings.ws_replay_limit
        # The conversation row came from the primary: its last_seq makes a lagging
        # replica fall back to the primary (read-your-writes across pods).
        messages = await self.actions.history_after(
            conversation, frame.after_seq, limit + 1, known_seq=conversation.last_seq
        )
        more = len(messages) > limit
        messages = messages[:limit]
        if messages:
            self.socket.deliver(
                dumps(
                    {
                        "type": "messages",
                        "conversation_id": str(conversation.id),
                        "messages": [message_json(m) for m in messages],
                        "more": more,
                    }
                )
            )
        self.socket.deliver(
            dumps(
                {
                    "type": "subscribed",
                    "ref": frame.id,
                    "conversation_id": str(conversation.id),
                    "status": conversation.status,
                    "last_seq": max(conversation.last_seq, messages[-1].seq if messages else 0),
                    "more": more,
                    "read": await self.actions.conversations.read_states(conversation.id),
                }
            )
        )

    async def _fetch(self, frame: Fetch) -> None:
        conversation = await self.actions.visible(
            self.principal, frame.conversation_id, self.socket.team_ids
        )
        messages = await self.actions.history_after(
            conversation, frame.after_seq, frame.limit + 1, known_seq=conversation.last_seq
        )
        self.socket.deliver(
            dumps(
                {
                    "type": "messages",
                    "ref": frame.id,
                    "conversation_id": str(conversation.id),
                    "messages": [message_json(m) for m in messages[: frame.limit]],
                    "more": len(messages) > frame.limit,
                }
            )
        )

    async def _typing(self, frame: Typing) -> None:
        if frame.conversation_id not in self.socket.subscriptions:
            raise Invalid("subscribe to the conversation first")
        await self.hub.publish(
            conversation_channel(frame.conversation_id),
            dumps(
                {
                    "type": "typing",
                    "conversation_id": str(frame.conversation_id),
                    "sender_id": str(self.principal.subject_id),
                    "sender_kind": "visitor" if self.principal.role == "visitor" else "agent",
                    "state": frame.state,
                }
            ),
        )

    async def _presence(self, frame: Presence) -> None:
        if not self.principal.is_staff:
            self.socket.deliver(error_frame("forbidden", "presence is for agents", frame.id))
            return
        if self.ctx.on_presence is not None:
            await self.ctx.on_presence(self.principal, frame.status)
        self.socket.deliver(dumps({"type": "presence", "ref": frame.id, "status": frame.status}))
