"""The per-socket layout that keeps 10,000 sockets under 20 KB each (pure logic)."""

from __future__ import annotations

from aiohttp import web

from livedesk.chat.ws import _LAZY_ATTRIBUTES, _ServedSocket


def test_aiohttps_lazily_set_socket_state_lives_in_slots() -> None:
    ws = _ServedSocket(heartbeat=30, compress=False)
    # Each is still one of aiohttp's class defaults (a rename would silently
    # move it back into every socket's __dict__) and starts at that default.
    for name in _LAZY_ATTRIBUTES:
        assert name in vars(web.WebSocketResponse), name
        assert getattr(ws, name) == getattr(web.WebSocketResponse, name)
    before = set(vars(ws))
    for name in _LAZY_ATTRIBUTES:  # what heartbeats and closing do
        setattr(ws, name, getattr(ws, name))
    ws.session = None
    assert set(vars(ws)) == before
    # CPython shares one key table among a class's instance dicts (~0.3 KB each
    # instead of ~1.6 KB) only while they use at most 30 distinct names.
    assert len(before) <= 24
