"""The real nginx gateway in front of recording stand-in services: routing, headers, errors."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from livedesk.integration_support.gateway import Gateway, StubService, mint, start_gateway

pytestmark = pytest.mark.integration


@dataclass
class Site:
    gateway: Gateway
    chat_a: StubService
    chat_b: StubService
    analytics: StubService

    def service_of(self, request_id: str) -> str | None:
        """Which stub received the request with this X-Request-ID."""
        for stub in (self.chat_a, self.chat_b, self.analytics):
            if any(s.headers.get("X-Request-ID") == request_id for s in stub.seen):
                return stub.name
        return None


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    stubs = [await StubService(n).start() for n in ("chat-a", "chat-b", "analytics")]
    gateway = await start_gateway(
        tmp_path,
        chat=[stubs[0].address, stubs[1].address],
        analytics=[stubs[2].address],
        upstream_timeout="1s",
        max_body="64k",
        cors_origins="https://shop.example.com",
    )
    try:
        yield Site(gateway, *stubs)
    finally:
        gateway.stop()
        for stub in stubs:
            stub.release.set()
            await stub.stop()


ROUTES = [
    # method, path, needs a token, service
    ("GET", "/api/v1/conversations", True, "chat"),
    ("GET", "/api/v1/conversations/0190b4a2-0000-7000-8000-000000000001/messages", True, "chat"),
    ("POST", "/api/v1/ws/tickets", True, "chat"),
    ("GET", "/api/v1/reportsX", True, "chat"),
    ("GET", "/api/v1/nonexistent", True, "chat"),
    ("GET", "/api/v1/reports/volume", True, "analytics"),
    ("GET", "/api/v1/reports/agents", True, "analytics"),
    ("GET", "/api/v1/search/messages", True, "analytics"),
    ("POST", "/api/v1/auth/login", False, "chat"),
    ("POST", "/api/v1/auth/refresh", False, "chat"),
    ("POST", "/api/v1/widget/sessions", False, "chat"),
    ("GET", "/api/v1/openapi.yaml", False, "chat"),
    ("GET", "/api/v1/reports/openapi.yaml", False, "analytics"),
]


async def test_each_path_reaches_its_service_with_request_id_and_headers(site: Site) -> None:
    token, ticket = mint(), mint("ws_ticket")
    async with aiohttp.ClientSession() as session:
        for i, (method, path, needs_token, service) in enumerate(ROUTES):
            request_id = f"route-{i}"
            headers = {"X-Request-ID": request_id}
            if needs_token:
                headers["Authorization"] = f"Bearer {token}"
            async with session.request(method, site.gateway.url + path, headers=headers) as resp:
                assert resp.status == 200, (path, resp.status, await resp.text())
                body = await resp.json()
                assert resp.headers["X-Request-ID"] == request_id
            assert body["path"] == path
            assert body["request_id"] == request_id  # passed through to the service
            assert body["forwarded_for"] == "127.0.0.1"
            assert body["service"].startswith(service), (path, body)

        # A request without an id gets one, the same for the service and the client.
        async with session.get(
            site.gateway.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            generated = resp.headers["X-Request-ID"]
            assert re.fullmatch(r"[0-9a-f]{32}", generated)
            assert (await resp.json())["request_id"] == generated
            for name, value in {
                "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
            }.items():
                assert resp.headers[name] == value
            assert resp.headers.get("Server") == "nginx"  # no version

        # The gateway's own health, answered by nginx: no service sees it.
        async with session.get(site.gateway.url + "/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}

        # The WebSocket is upgraded and proxied to a chat pod.
        async with session.ws_connect(f"{site.gateway.ws_url}/ws?ticket={ticket}") as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello"
            assert hello["service"].startswith("chat")
            await ws.send_str('{"type": "ping"}')
            assert await ws.receive_json(timeout=5) == {"type": "ping"}

    every = site.chat_a.paths() + site.chat_b.paths() + site.analytics.paths()
    assert "/healthz" not in every
    assert site.analytics.paths() == [
        p for _, p, _, s in ROUTES if s == "analytics"
    ]  # analytics saw exactly its routes
    # least_conn spreads sequential requests over both chat pods.
    assert site.chat_a.seen
    assert site.chat_b.seen

    log = {e["request_id"]: e for e in site.gateway.access_log()}
    entry = log["route-0"]
    assert entry["path"] == "/api/v1/conversations"
    assert entry["status"] == 200
    assert entry["upstream"] in (site.chat_a.address, site.chat_b.address)
    assert entry["subject"] == "0190b4a2-0000-7000-8000-000000000001"  # from the verified token
    ws_entries = [e for e in log.values() if e["path"] == "/ws"]
    assert ws_entries
    assert ws_entries[0]["status"] == 101
    raw_log = (site.gateway.run_dir / "access.log").read_text()
    assert ticket.split(".")[2] not in raw_log  # the ticket is never logged


async def _error(resp: aiohttp.ClientResponse) -> str:
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    code: str = body["error"]["code"]
    return code


async def test_gateway_errors_are_json_in_the_api_format(site: Site) -> None:
    token = {"Authorization": f"Bearer {mint()}"}
    async with aiohttp.ClientSession() as session:
        for path in ("/nope", "/api/v2/conversations", "/metrics", "/readyz"):
            async with session.get(site.gateway.url + path) as resp:
                assert resp.status == 404, path
                assert await _error(resp) == "not_found"

        big = b"x" * (100 * 1024)
        async with session.post(
            site.gateway.url + "/api/v1/conversations",
            data=big,
            headers={**token, "X-Request-ID": "too-big", "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 413
            assert await _error(resp) == "payload_too_large"
        async with session.post(
            site.gateway.url + "/api/v1/conversations",
            data=b"x" * (60 * 1024),
            headers={**token, "X-Request-ID": "fits"},
        ) as resp:
            assert resp.status == 200

        # An analytics call that outlives GATEWAY_UPSTREAM_TIMEOUT (1s) is cut with a 504.
        async with session.get(
            site.gateway.url + "/api/v1/reports/slow", headers={**token, "X-Request-ID": "slow"}
        ) as resp:
            assert resp.status == 504
            assert await _error(resp) == "gateway_timeout"

        # No analytics instance at all: 502, still JSON.
        site.analytics.release.set()
        await site.analytics.stop()
        async with session.get(site.gateway.url + "/api/v1/reports/volume", headers=token) as resp:
            assert resp.status == 502
            assert await _error(resp) == "bad_gateway"

    assert site.service_of("too-big") is None  # refused at the edge
    assert site.service_of("fits") is not None


async def test_cors_answers_only_the_allowed_origins(site: Site) -> None:
    allowed, other = "https://shop.example.com", "https://evil.example.net"
    async with aiohttp.ClientSession() as session:
        async with session.options(
            site.gateway.url + "/api/v1/conversations",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        ) as resp:
            assert resp.status == 204  # the preflight needs no token
            assert resp.headers["Access-Control-Allow-Origin"] == allowed
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        async with session.post(
            site.gateway.url + "/api/v1/widget/sessions", headers={"Origin": allowed}, json={}
        ) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == allowed
            assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
        async with session.get(site.gateway.url + "/api/v1/me", headers={"Origin": allowed}) as r:
            assert r.status == 401  # even errors carry CORS headers, so the widget can read them
            assert r.headers["Access-Control-Allow-Origin"] == allowed
        async with session.options(
            site.gateway.url + "/api/v1/conversations",
            headers={"Origin": other, "Access-Control-Request-Method": "POST"},
        ) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert "Access-Control-Allow-Methods" not in resp.headers
    assert not any(s.method == "OPTIONS" for s in site.chat_a.seen + site.chat_b.seen)


async def test_a_dead_pod_is_skipped_and_idempotent_requests_retried(site: Site) -> None:
    token = {"Authorization": f"Bearer {mint()}"}
    await site.chat_a.stop()  # connection refused from now on
    async with aiohttp.ClientSession() as session:
        for i in range(10):
            async with session.get(
                site.gateway.url + "/api/v1/conversations",
                headers={**token, "X-Request-ID": f"get-{i}"},
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["service"] == "chat-b"
            async with session.post(
                site.gateway.url + "/api/v1/ws/tickets",
                headers={**token, "X-Request-ID": f"post-{i}"},
            ) as resp:
                assert resp.status == 200  # refused connections are safe to retry, even a POST
                assert (await resp.json())["service"] == "chat-b"
    log = site.gateway.access_log()
    retried = [e for e in log if site.chat_a.address in e["upstream"]]
    assert retried  # the dead pod was tried, failed, and the request went on ...
    assert all(e["upstream"].endswith(site.chat_b.address) for e in retried)
    # ... and passive health checks took it out: later requests went straight to chat-b.
    assert len(retried) < 20
