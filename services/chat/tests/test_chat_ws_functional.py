"""The WebSocket protocol against a real server, database and Redis fan-out."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from livedesk.chat.api_conversations import ACTIONS_KEY
from livedesk.chat.fanout import conversation_channel
from livedesk.chat.testing import Chat
from livedesk.chat.ws import WS_KEY

pytestmark = pytest.mark.integration


async def _next(ws: Any, kind: str, timeout: float = 5) -> dict[str, Any]:
    """The next frame of ``kind`` (skipping others)."""
    async with asyncio.timeout(timeout):
        while True:
            frame: dict[str, Any] = await ws.receive_json()
            if frame["type"] == kind:
                return frame


def _text(**frame: Any) -> str:
    return json.dumps(frame)


async def _setup(chat: Chat) -> tuple[dict[str, Any], dict[str, Any]]:
    visitor = await chat.visitor()
    conversation = await chat.conversation(visitor["access_token"])
    return visitor, conversation


def _sends_timed() -> float:
    return REGISTRY.get_sample_value("livedesk_chat_send_seconds_count") or 0.0


async def test_visitor_and_admin_exchange_messages_live(chat: Chat) -> None:
    timed = _sends_timed()
    visitor, conversation = await _setup(chat)
    cid = conversation["id"]
    v = await chat.ws(visitor["access_token"])
    a = await chat.ws(chat.token())
    for ws in (v, a):
        await ws.send_json({"type": "subscribe", "conversation_id": cid, "after_seq": 0})
        assert (await _next(ws, "subscribed"))["last_seq"] == 0

    await v.send_json(
        {"type": "send", "id": "r1", "conversation_id": cid, "client_msg_id": "v1", "body": "hi"}
    )
    ack = await _next(v, "ack")
    assert (ack["ref"], ack["seq"], ack["duplicate"]) == ("r1", 1, False)
    for ws in (v, a):
        frame = await _next(ws, "message")
        assert (frame["message"]["seq"], frame["message"]["body"]) == (1, "hi")

    await a.send_json(
        {"type": "send", "conversation_id": cid, "client_msg_id": "a1", "body": "hello!"}
    )
    assert (await _next(v, "message"))["message"]["sender_kind"] == "agent"
    assert _sends_timed() - timed == 2  # each send's frame -> ack is measured once


async def test_subscribe_replays_after_seq_then_streams(chat: Chat) -> None:
    visitor, conversation = await _setup(chat)
    cid = conversation["id"]
    headers = chat.auth(visitor["access_token"])
    for i in range(5):
        await chat.client.post(
            f"/api/v1/conversations/{cid}/messages", json={"body": f"m{i}"}, headers=headers
        )
    ws = await chat.ws(visitor["access_token"])
    await ws.send_json({"type": "subscribe", "conversation_id": cid, "after_seq": 2})
    replay = await _next(ws, "messages")
    assert [m["seq"] for m in replay["messages"]] == [3, 4, 5]
    subscribed = await _next(ws, "subscribed")
    assert (subscribed["last_seq"], subscribed["more"]) == (5, False)
    await chat.client.post(
        f"/api/v1/conversations/{cid}/messages", json={"body": "live"}, headers=headers
    )
    assert (await _next(ws, "message"))["message"]["seq"] == 6
    await ws.send_json({"type": "fetch", "conversation_id": cid, "after_seq": 4, "limit": 1})
    page = await _next(ws, "messages")
    assert ([m["seq"] for m in page["messages"]], page["more"]) == ([5], True)


async def test_retried_send_is_not_duplicated(chat: Chat) -> None:
    visitor, conversation = await _setup(chat)
    cid = conversation["id"]
    ws = await chat.ws(visitor["access_token"])
    admin = await chat.ws(chat.token())
    await admin.send_json({"type": "subscribe", "conversation_id": cid})
    await _next(admin, "subscribed")
    frame = {"type": "send", "conversation_id": cid, "client_msg_id": "same", "body": "once"}
    await ws.send_json(frame)
    first = await _next(ws, "ack")
    assert (await _next(admin, "message"))["message"]["seq"] == first["seq"]
    await ws.send_json(frame)
    second = await _next(ws, "ack")
    assert second["seq"] == first["seq"]
    assert second["message_id"] == first["message_id"]
    assert second["duplicate"] is True
    # Published again (the pod that committed it may have died before its publish).
    again = (await _next(admin, "message"))["message"]
    assert (again["seq"], again["id"]) == (first["seq"], first["message_id"])
    resp = await chat.client.get(
        f"/api/v1/conversations/{cid}/messages", headers=chat.auth(visitor["access_token"])
    )
    assert [m["body"] for m in (await resp.json())["items"]] == ["once"]


async def test_typing_and_read_receipts_reach_the_other_side(chat: Chat) -> None:
    visitor, conversation = await _setup(chat)
    cid = conversation["id"]
    v = await chat.ws(visitor["access_token"])
    a = await chat.ws(chat.token())
    for ws in (v, a):
        await ws.send_json({"type": "subscribe", "conversation_id": cid})
        await _next(ws, "subscribed")
    await v.send_json({"type": "typing", "conversation_id": cid, "state": True})
    typing = await _next(a, "typing")
    assert (typing["sender_kind"], typing["state"]) == ("visitor", True)
    await a.send_json({"type": "send", "conversation_id": cid, "client_msg_id": "x", "body": "?"})
    await _next(v, "message")
    await v.send_json({"type": "read", "conversation_id": cid, "seq": 1})
    read = await _next(a, "read")
    assert (read["reader_kind"], read["seq"]) == ("visitor", 1)


async def test_bad_frames_get_error_frames_and_the_socket_lives_on(chat: Chat) -> None:
    visitor, conversation = await _setup(chat)
    ws = await chat.ws(visitor["access_token"])
    cases: list[tuple[Any, str]] = [
        ("{not json", "bad_frame"),
        ("[1, 2]", "bad_frame"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "send", "conversation_id": "x", "client_msg_id": "a", "body": "b"}', "invalid"),
        (_text(type="subscribe", conversation_id=str(uuid.uuid4()), extra=1), "invalid"),
        (_text(type="subscribe", conversation_id=str(uuid.uuid4())), "not_found"),
        (
            _text(type="send", conversation_id=conversation["id"], client_msg_id="a", body="  "),
            "validation_error",
        ),
    ]
    for text, code in cases:
        await ws.send_str(text)
        assert (await _next(ws, "error"))["code"] == code, text
    await ws.send_bytes(b"\x00\x01")
    assert (await _next(ws, "error"))["code"] == "bad_frame"
    await ws.send_json({"type": "ping", "id": "p"})
    assert (await _next(ws, "pong"))["ref"] == "p"


async def test_cannot_subscribe_to_someone_elses_conversation(chat: Chat) -> None:
    _, conversation = await _setup(chat)
    intruder = await chat.visitor()
    ws = await chat.ws(intruder["access_token"])
    await ws.send_json({"type": "subscribe", "conversation_id": conversation["id"]})
    assert (await _next(ws, "error"))["code"] == "not_found"
    other_tenant_admin = await chat.ws(chat.token(chat.stranger.admin))
    await other_tenant_admin.send_json({"type": "subscribe", "conversation_id": conversation["id"]})
    assert (await _next(other_tenant_admin, "error"))["code"] == "not_found"


async def test_oversize_frame_closes_with_1009(chat: Chat) -> None:
    visitor, _ = await _setup(chat)
    ws = await chat.ws(visitor["access_token"])
    await ws.send_str("x" * (chat.settings.ws_max_frame_bytes + 1))
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 1009


async def test_flood_is_limited_then_cut_and_others_are_unaffected(chat: Chat) -> None:
    flooder, _ = await _setup(chat)
    calm, calm_conversation = await _setup(chat)
    f = await chat.ws(flooder["access_token"])
    c = await chat.ws(calm["access_token"])
    for i in range(500):
        await f.send_json({"type": "ping", "id": str(i)})
    limited = 0
    async with asyncio.timeout(10):
        while True:
            msg = await f.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            limited += '"rate_limited"' in msg.data
    assert limited > 0
    assert f.close_code == 1008
    await c.send_json(
        {"type": "send", "conversation_id": calm_conversation["id"], "client_msg_id": "k",
         "body": "still fine"}
    )  # fmt: skip
    assert (await _next(c, "ack"))["seq"] == 1


async def test_handshake_rejects_bad_reused_and_foreign_origin_tickets(chat: Chat) -> None:
    visitor, _ = await _setup(chat)
    for ticket in ("", "garbage", chat.token()):  # an access token is not a ticket
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await chat.client.ws_connect(f"/ws?ticket={ticket}")
        assert err.value.status == 401
    resp = await chat.client.post("/api/v1/ws/tickets", headers=chat.auth(visitor["access_token"]))
    ticket = (await resp.json())["ticket"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await chat.client.ws_connect(f"/ws?ticket={ticket}", origin="https://evil.example")
    assert err.value.status == 403
    resp = await chat.client.post("/api/v1/ws/tickets", headers=chat.auth(visitor["access_token"]))
    ticket = (await resp.json())["ticket"]
    ws = await chat.client.ws_connect(f"/ws?ticket={ticket}", origin="https://shop.example")
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await chat.client.ws_connect(f"/ws?ticket={ticket}")
    assert err.value.status == 401  # single use


async def test_connections_per_user_are_limited(chat: Chat) -> None:
    token = chat.token(chat.org.agent)
    for _ in range(chat.settings.ws_connections_per_user):
        await chat.ws(token)
    resp = await chat.client.post("/api/v1/ws/tickets", headers=chat.auth(token))
    ticket = (await resp.json())["ticket"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await chat.client.ws_connect(f"/ws?ticket={ticket}")
    assert err.value.status == 429


async def test_slow_consumer_is_disconnected_not_buffered(chat: Chat) -> None:
    visitor, conversation = await _setup(chat)
    ws = await chat.ws(visitor["access_token"], max_msg_size=0)
    await ws.send_json({"type": "subscribe", "conversation_id": conversation["id"]})
    await _next(ws, "subscribed")
    hub = chat.client.app[ACTIONS_KEY].hub
    big = '{"type":"message","pad":"' + "x" * 60_000 + '"}'
    # The client reads nothing while the pod pushes ~60 MB at it: the send queue
    # (bounded) overflows and the pod hangs up instead of buffering.
    for _ in range(chat.settings.ws_send_queue + 1000):
        hub.deliver_local(conversation_channel(uuid.UUID(conversation["id"])), big)
    async with asyncio.timeout(15):
        while (await ws.receive()).type == aiohttp.WSMsgType.TEXT:
            pass
    assert ws.close_code == 4008


async def test_drain_tells_clients_to_reconnect(chat: Chat) -> None:
    visitor, _ = await _setup(chat)
    ws = await chat.ws(visitor["access_token"])
    await chat.registry.drain(timeout=2)
    assert (await _next(ws, "reconnect"))["type"] == "reconnect"
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 1012


async def test_consoles_hear_only_what_they_may_see(chat: Chat) -> None:
    in_team = await chat.ws(chat.token(chat.org.agent))  # member of the inbox's team
    outsider = await chat.ws(chat.token(chat.org.other_agent))  # in no team
    admin = await chat.ws(chat.token())
    other_tenant = await chat.ws(chat.token(chat.stranger.admin))
    visitor = await chat.visitor()
    conversation = await chat.conversation(visitor["access_token"])
    for ws in (in_team, admin):
        notice = await _next(ws, "conversation")
        assert (notice["event"], notice["conversation"]["id"]) == ("created", conversation["id"])
    # The outsider and the other tenant hear nothing of it: a ping proves their
    # sockets are live and nothing was queued before the pong.
    for ws in (outsider, other_tenant):
        await ws.send_json({"type": "ping", "id": "live"})
        assert (await ws.receive_json(timeout=5))["type"] == "pong"


async def test_hello_comes_first_even_when_an_event_arrives_while_joining(
    chat: Chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = chat.client.app[WS_KEY].actions.hub
    join = hub.join

    async def join_then_hear_an_event(channel: str, listener: Any) -> None:
        await join(channel, listener)
        # A console event published the moment the subscription took effect.
        hub.deliver_local(channel, json.dumps({"type": "conversation", "event": "queued"}))

    monkeypatch.setattr(hub, "join", join_then_hear_an_event)
    ws = await chat.ws(chat.token(chat.org.agent))  # asserts the first frame is hello
    assert (await _next(ws, "conversation"))["event"] == "queued"


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    coro: Any = task.get_coro()
    while getattr(coro, "cr_frame", None) is not None:
        names.append(coro.cr_frame.f_code.co_name)
        coro = coro.cr_await
    return names


async def test_an_open_socket_holds_no_middleware_frame_and_caches_no_ticket(chat: Chat) -> None:
    verifier = chat.client.app[WS_KEY].verifier
    token = chat.token()
    first = await chat.ws(token)  # the access token that got the ticket is cached
    cached = verifier.cached
    second = await chat.ws(token)
    assert verifier.cached == cached  # neither single-use ticket is
    served = [names for names in map(_awaiting, asyncio.all_tasks()) if "serve" in names]
    assert len(served) == 2
    for names in served:
        assert not {"request_context", "json_errors", "chat_errors", "websocket"} & set(names)
    await second.send_json({"type": "ping", "id": "p"})
    assert (await _next(second, "pong"))["ref"] == "p"
    await first.close()


async def test_permessage_deflate_is_not_negotiated(chat: Chat) -> None:
    # Browsers always offer it; a deflate context per socket costs far more
    # memory than the socket itself.
    resp = await chat.client.post("/api/v1/ws/tickets", headers=chat.auth(chat.token()))
    ticket = (await resp.json())["ticket"]
    ws = await chat.client.ws_connect(f"/ws?ticket={ticket}", compress=15)
    assert ws.compress == 0
    assert (await ws.receive_json(timeout=5))["type"] == "hello"
    await ws.close()
