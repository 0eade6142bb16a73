"""JWT verification at the edge: every bad token is a 401 from nginx and never reaches a service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from livedesk.integration_support.gateway import (
    Gateway,
    StubService,
    bad_tokens,
    mint,
    start_gateway,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[tuple[Gateway, list[StubService]]]:
    stubs = [await StubService(n).start() for n in ("chat", "analytics")]
    gateway = await start_gateway(tmp_path, chat=[stubs[0].address], analytics=[stubs[1].address])
    try:
        yield gateway, stubs
    finally:
        gateway.stop()
        for stub in stubs:
            await stub.stop()


async def test_bad_tokens_are_refused_at_the_edge_and_never_reach_a_service(
    edge: tuple[Gateway, list[StubService]],
) -> None:
    gateway, stubs = edge
    refused: dict[str, str] = {}  # request id -> expected reason
    tokens = bad_tokens()
    reasons = {
        "expired": "token expired",
        "bad_signature": "invalid token",
        "tampered_payload": "invalid token",
        "unknown_kid": "unknown signing key",
        "alg_hs256": "algorithm not allowed",
        "alg_none": "malformed token",
        "refresh_token": "expected an access token",
        "ws_ticket_as_access": "expected an access token",
        "wrong_audience": "wrong audience",
        "wrong_issuer": "wrong issuer",
    }
    async with aiohttp.ClientSession() as session:

        async def call(path: str, request_id: str, authorization: str | None) -> None:
            request_id = request_id.replace("/", ".")  # X-Request-ID allows [A-Za-z0-9._:-]
            headers = {"X-Request-ID": request_id}
            if authorization is not None:
                headers["Authorization"] = authorization
            async with session.get(gateway.url + path, headers=headers) as resp:
                assert resp.status == 401, (request_id, resp.status)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                body = await resp.json()
                assert body["error"]["code"] == "unauthorized"
                refused[request_id] = body["error"]["message"]

        for route in ("/api/v1/conversations", "/api/v1/reports/volume", "/api/v1/search/x"):
            await call(route, f"missing{route}", None)
            await call(route, f"not-bearer{route}", f"Basic {mint()}")
            await call(route, f"empty{route}", "Bearer ")
            for kind, token in tokens.items():
                await call(route, f"{kind}{route}", f"Bearer {token}")

        # The WebSocket handshake: the ticket is checked before any upgrade.
        for kind, query in {
            "ws-missing": "",
            "ws-empty": "?ticket=",
            "ws-access-token": f"?ticket={mint()}",
            "ws-expired": f"?ticket={mint('ws_ticket', ttl=-60)}",
            "ws-bad-signature": f"?ticket={tokens['bad_signature']}",
            "ws-garbage": "?ticket=%ZZ",
        }.items():
            async with session.get(
                f"{gateway.url}/ws{query}",
                headers={
                    "X-Request-ID": kind,
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            ) as resp:
                assert resp.status == 401, kind
                refused[kind] = (await resp.json())["error"]["message"]

        # Positive control: the same calls with good tokens get through.
        async with session.get(
            gateway.url + "/api/v1/conversations",
            headers={"Authorization": f"Bearer {mint()}", "X-Request-ID": "good"},
        ) as resp:
            assert resp.status == 200
        async with session.ws_connect(
            f"{gateway.ws_url}/ws?ticket={mint('ws_ticket')}", headers={"X-Request-ID": "good-ws"}
        ) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "hello"

    for kind, reason in reasons.items():
        assert refused[f"{kind}.api.v1.conversations"] == reason, kind
    assert refused["missing.api.v1.conversations"] == "missing bearer token"
    assert refused["ws-missing"] == "missing ticket"
    assert refused["ws-access-token"] == "expected an ws_ticket token"
    assert refused["ws-expired"] == "token expired"

    # The services' own request records: only the good calls ever arrived.
    received = {s.headers.get("X-Request-ID") for stub in stubs for s in stub.seen}
    assert received == {"good", "good-ws"}
    assert len(refused) == 3 * (3 + len(tokens)) + 6
    # And the gateway's access log says the same: no upstream for any refused request.
    log = {e["request_id"]: e for e in gateway.access_log()}
    for request_id in refused:
        assert log[request_id]["status"] == 401
        assert log[request_id]["upstream"] == ""
        assert log[request_id]["auth_error"] == refused[request_id]
