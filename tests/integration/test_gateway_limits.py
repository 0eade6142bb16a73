"""Rate and connection limits at the edge: per client IP, per token, per IP on sign-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from livedesk.integration_support.gateway import Gateway, StubService, mint, start_gateway
from livedesk.platform.testing import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
async def chat() -> AsyncIterator[StubService]:
    stub = await StubService("chat").start()
    yield stub
    await stub.stop()


@asynccontextmanager
async def _limited(tmp_path: Path, chat: StubService, **limits: str) -> AsyncIterator[Gateway]:
    """A gateway in front of the stub with these ``GATEWAY_*`` limits, stopped afterwards."""
    gateway = await start_gateway(tmp_path, chat=[chat.address], analytics=[chat.address], **limits)
    try:
        yield gateway
    finally:
        gateway.stop()


def _from(ip: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``ip`` (any 127.x address is local)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))


async def _statuses(
    session: aiohttp.ClientSession, url: str, n: int, headers: dict[str, str]
) -> list[int]:
    async def one() -> int:
        async with session.get(url, headers=headers) as resp:
            if resp.status == 429:
                assert resp.headers["Retry-After"] == "1"
                body = await resp.json()
                assert body["error"]["code"] == "rate_limited"
            return resp.status

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_a_flood_from_one_ip_is_limited_while_another_client_is_served(
    tmp_path: Path, chat: StubService
) -> None:
    async with _limited(
        tmp_path,
        chat,
        rate_per_ip="10r/s",
        burst_per_ip="10",
        rate_per_token="1000r/s",
        burst_per_token="1000",
    ) as gateway:
        url = gateway.url + "/api/v1/conversations"
        async with _from("127.0.0.1") as flooder, _from("127.0.0.2") as neighbour:
            flood = await _statuses(flooder, url, 100, {"Authorization": f"Bearer {mint()}"})
            served = await _statuses(neighbour, url, 5, {"Authorization": f"Bearer {mint()}"})
        assert set(flood) == {200, 429}
        assert flood.count(200) <= 10 + 1 + 2  # the burst, plus what the rate refilled
        assert flood.count(429) >= 80
        assert served == [200] * 5  # the other client never noticed
        remote = {e["remote_addr"] for e in gateway.access_log() if e["status"] == 429}
        assert remote == {"127.0.0.1"}


async def test_one_token_is_limited_while_another_from_the_same_ip_is_served(
    tmp_path: Path, chat: StubService
) -> None:
    async with _limited(
        tmp_path,
        chat,
        rate_per_ip="1000r/s",
        burst_per_ip="1000",
        rate_per_token="5r/s",
        burst_per_token="5",
    ) as gateway:
        url = gateway.url + "/api/v1/conversations"
        async with aiohttp.ClientSession() as session:
            noisy = await _statuses(session, url, 40, {"Authorization": f"Bearer {mint()}"})
            quiet = await _statuses(session, url, 3, {"Authorization": f"Bearer {mint()}"})
        assert noisy.count(429) >= 30
        assert quiet == [200] * 3


async def test_sign_in_is_limited_harder_and_connections_per_ip_are_capped(
    tmp_path: Path, chat: StubService
) -> None:
    async with (
        _limited(
            tmp_path,
            chat,
            rate_auth="1r/s",
            burst_auth="3",
            conn_per_ip="4",
        ) as gateway,
        aiohttp.ClientSession() as session,
    ):
        logins = []
        for _ in range(10):
            async with session.post(gateway.url + "/api/v1/auth/login", json={}) as resp:
                logins.append(resp.status)
        assert logins.count(200) <= 5
        assert logins.count(429) >= 5

        # Four requests held open by the service use the IP's four connection slots.
        token = {"Authorization": f"Bearer {mint()}"}
        held = [
            asyncio.create_task(_get(session, gateway.url + "/api/v1/slow", token))
            for _ in range(4)
        ]

        async def all_held() -> bool:
            return sum(p == "/api/v1/slow" for p in chat.paths()) == 4

        await wait_until(all_held, timeout=5, what="4 requests in flight")
        assert await _get(session, gateway.url + "/api/v1/me", token) == 429
        chat.release.set()
        assert await asyncio.gather(*held) == [200] * 4
        assert await _get(session, gateway.url + "/api/v1/me", token) == 200


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    async with session.get(url, headers=headers) as resp:
        await resp.read()
        return resp.status
