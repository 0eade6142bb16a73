"""The gateway's JWT cache: a verified token skips the ECDSA check, never past its exp."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from livedesk.integration_support.gateway import (
    RENDERER,
    Gateway,
    StubService,
    bad_tokens,
    mint,
    outside_worker_dir,
    start_gateway,
)
from livedesk.platform.testing import wait_until

pytestmark = pytest.mark.integration

LEEWAY = 5  # seconds past exp a token is still accepted (gateway/njs/livedesk_auth.js)


@pytest.fixture
async def stub() -> AsyncIterator[StubService]:
    service = await StubService("chat").start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def gateway(tmp_path: Path, stub: StubService) -> AsyncIterator[Gateway]:
    started = await start_gateway(tmp_path, chat=[stub.address], analytics=[stub.address])
    try:
        yield started
    finally:
        started.stop()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return claims


async def _get(session: aiohttp.ClientSession, gateway: Gateway, token: str, rid: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": rid}
    async with session.get(f"{gateway.url}/api/v1/conversations", headers=headers) as resp:
        return resp.status


async def _log(gateway: Gateway, *request_ids: str) -> dict[str, dict[str, Any]]:
    """The access log by request id, once it holds ``request_ids`` (nginx writes a line
    after the response has gone out)."""

    async def written() -> dict[str, dict[str, Any]]:
        log = {e["request_id"]: e for e in gateway.access_log()}
        return log if all(r in log for r in request_ids) else {}

    found: dict[str, dict[str, Any]] = await wait_until(written, what=f"log of {request_ids}")
    return found


async def test_verified_tokens_are_cached_with_their_own_identity(
    gateway: Gateway, stub: StubService
) -> None:
    agent = mint(role="agent", subject="0190b4a2-0000-7000-8000-0000000000a1")
    admin = mint(
        role="admin",
        subject="0190b4a2-0000-7000-8000-0000000000b2",
        tenant="0190b4a2-0000-7000-8000-0000000000bb",
    )
    bad = bad_tokens()["bad_signature"]
    async with aiohttp.ClientSession() as session:
        for rid, token in [
            ("agent-1", agent),
            ("admin-1", admin),
            ("agent-2", agent),
            ("admin-2", admin),
            ("bad-1", bad),
            ("bad-2", bad),
        ]:
            expected = 401 if rid.startswith("bad") else 200
            assert await _get(session, gateway, token, rid) == expected, rid

    log = await _log(gateway, "agent-1", "admin-1", "agent-2", "admin-2", "bad-1", "bad-2")
    # The first use runs the full check; the second is served by the cache, and the
    # identity the log (and every later hop) sees is that token's own, not another's.
    assert [log[r]["auth_cache"] for r in ("agent-1", "admin-1")] == ["MISS", "MISS"]
    assert [log[r]["auth_cache"] for r in ("agent-2", "admin-2")] == ["HIT", "HIT"]
    for rid, token in [("agent-2", agent), ("admin-2", admin)]:
        claims = _claims(token)
        assert (log[rid]["subject"], log[rid]["tenant"], log[rid]["role"]) == (
            claims["sub"],
            claims["tid"],
            claims["role"],
        )
    # A refusal is never remembered: the bad token meets the full check each time.
    assert [log[r]["auth_cache"] for r in ("bad-1", "bad-2")] == ["MISS", "MISS"]
    assert log["bad-2"]["auth_error"] == "invalid token"
    assert {s.headers["X-Request-ID"] for s in stub.seen} == {
        "agent-1",
        "admin-1",
        "agent-2",
        "admin-2",
    }


async def test_an_expired_token_is_refused_even_after_it_was_cached(
    gateway: Gateway, stub: StubService
) -> None:
    token = mint(ttl=5)
    expires = _claims(token)["exp"]
    async with aiohttp.ClientSession() as session:
        assert await _get(session, gateway, token, "fresh-1") == 200
        assert await _get(session, gateway, token, "fresh-2") == 200
        log = await _log(gateway, "fresh-2")
        assert log["fresh-2"]["auth_cache"] == "HIT"  # it was in the cache...

        # ...and once the token is past exp (and the verifier's leeway) the cache no longer
        # answers for it: the full check runs and refuses it.
        await wait_until(
            lambda: _past(expires + LEEWAY + 1), timeout=30, what="token past exp + leeway"
        )
        assert await _get(session, gateway, token, "stale") == 401

    stale = (await _log(gateway, "stale"))["stale"]
    assert stale["auth_error"] == "token expired"
    assert stale["auth_cache"] != "HIT"
    assert "stale" not in {s.headers["X-Request-ID"] for s in stub.seen}


async def _past(moment: float) -> bool:
    return time.time() > moment


async def test_the_cache_can_be_turned_off(tmp_path: Path, stub: StubService) -> None:
    gateway = await start_gateway(
        tmp_path, chat=[stub.address], analytics=[stub.address], auth_cache_ttl="0"
    )
    try:
        token = mint()
        async with aiohttp.ClientSession() as session:
            assert await _get(session, gateway, token, "off-1") == 200
            assert await _get(session, gateway, token, "off-2") == 200
            assert await _get(session, gateway, bad_tokens()["expired"], "off-3") == 401
        log = await _log(gateway, "off-1", "off-2", "off-3")
        assert [log[r]["auth_cache"] for r in ("off-1", "off-2", "off-3")] == ["", "", ""]
        assert log["off-2"]["subject"] == _claims(token)["sub"]
        assert log["off-3"]["auth_error"] == "token expired"
    finally:
        gateway.stop()


def _cache_key_line(run_dir: Path, keys: dict[str, str] | None) -> str:
    env = {**os.environ, "GATEWAY_RUN_DIR": str(run_dir)}
    env.pop("JWT_PUBLIC_KEYS", None)
    if keys is not None:
        env["JWT_PUBLIC_KEYS"] = json.dumps(keys)
    rendered = subprocess.run(
        [sys.executable, str(RENDERER), "render"], env=env, capture_output=True, text=True
    )
    assert rendered.returncode == 0, rendered.stderr
    conf = Path(rendered.stdout.strip())
    scratch = outside_worker_dir(conf)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    lines = conf.read_text().splitlines()
    return next(line.strip() for line in lines if "proxy_cache_key" in line)


def test_a_new_key_set_never_matches_verifications_cached_with_the_old_one(
    tmp_path: Path,
) -> None:
    # The cache lives on disk across reloads; a key removed from JWT_PUBLIC_KEYS must not
    # keep its tokens alive, so the key set's fingerprint is part of every cache key.
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    dev = _cache_key_line(tmp_path, None)
    rotated = _cache_key_line(tmp_path, {"k2": pem})
    assert dev != rotated
    assert dev.endswith(':$auth_token_hash";')
    assert rotated.endswith(':$auth_token_hash";')
    assert _cache_key_line(tmp_path, None) == dev
