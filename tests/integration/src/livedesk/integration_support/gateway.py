"""The real nginx gateway for tests: rendered by gateway/render.py, started on a free port.

Also a stand-in upstream (:class:`StubService`) that records every request it
receives, so a test can prove what did and did not reach a service, and a way
to mint tokens of every kind, good and bad.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from livedesk.platform.auth import AuthSettings, Role, TokenType, load_issuer
from livedesk.platform.testing import free_port, wait_until

__all__ = [
    "RENDERER",
    "REPO",
    "Gateway",
    "StubService",
    "bad_tokens",
    "launch_gateway",
    "mint",
    "outside_worker_dir",
    "require_nginx",
    "start_gateway",
]

REPO = Path(__file__).resolve().parents[5]
RENDERER = REPO / "gateway" / "render.py"


def require_nginx() -> str:
    """The nginx binary; a clear failure (not a skip) when it is missing."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(
            "nginx is not installed: the gateway tests need it "
            "(apt-get install nginx libnginx-mod-http-js; .ci/run does this)"
        )
    return found


@dataclass
class Gateway:
    """One nginx process started from the rendered configuration."""

    port: int
    run_dir: Path
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    # The JWT cache's directory when render.py put it outside the run dir (in the temp dir).
    scratch: Path | None = None

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """ws://127.0.0.1:<port>."""
        return f"ws://127.0.0.1:{self.port}"

    def access_log(self) -> list[dict[str, Any]]:
        """The JSON access log lines so far, parsed."""
        path = self.run_dir / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def errors(self) -> str:
        """What nginx wrote to stderr."""
        return (self.run_dir / "nginx.out").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown), then wait."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def launch_gateway(
    tmp_path: Path, chat: list[str], analytics: list[str], **settings: str
) -> Gateway:
    """Render with ``GATEWAY_*`` ``settings`` (keys without the prefix) and start nginx."""
    nginx = require_nginx()
    port = free_port()
    run_dir = tmp_path / f"gateway-{port}"
    env = {
        **os.environ,
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_RUN_DIR": str(run_dir),
        "GATEWAY_ACCESS_LOG": str(run_dir / "access.log"),
        "GATEWAY_WORKERS": "1",
        "GATEWAY_CHAT_UPSTREAMS": ",".join(chat),
        "GATEWAY_ANALYTICS_UPSTREAMS": ",".join(analytics),
        "GATEWAY_ERROR_LOG_LEVEL": "warn",
        **{f"GATEWAY_{k.upper()}": v for k, v in settings.items()},
    }
    rendered = subprocess.run(
        [sys.executable, str(RENDERER), "render"], env=env, capture_output=True, text=True
    )
    if rendered.returncode != 0:
        raise RuntimeError(f"gateway/render.py failed: {rendered.stderr}")
    conf = rendered.stdout.strip()
    log = (run_dir / "nginx.out").open("ab")
    proc = subprocess.Popen(
        [nginx, "-p", str(run_dir), "-c", conf, "-g", "daemon off;"], stdout=log, stderr=log
    )
    return Gateway(port, run_dir, proc, log, outside_worker_dir(Path(conf)))


def outside_worker_dir(conf: Path) -> Path | None:
    """The JWT cache's directory of a rendered ``conf`` when render.py put it in the temp
    dir (nginx's workers cannot enter a private run dir), for the caller to remove."""
    cache = re.search(r"proxy_cache_path (\S+)/auth_cache ", conf.read_text())
    if cache is None or Path(cache.group(1)) == conf.parent:
        return None
    return Path(cache.group(1))


async def start_gateway(
    tmp_path: Path, chat: list[str], analytics: list[str], **settings: str
) -> Gateway:
    """:func:`launch_gateway`, then wait until its /healthz answers."""
    gateway = launch_gateway(tmp_path, chat, analytics, **settings)
    proc = gateway.proc

    async def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}: {gateway.errors()}")
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{gateway.url}/healthz") as resp,
            ):
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await wait_until(healthy, timeout=10, interval=0.02, what="nginx healthy")
    except BaseException:
        gateway.stop()
        raise
    return gateway


@dataclass
class Seen:
    """One request as a stub service received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StubService:
    """An HTTP + WebSocket upstream that answers who it is and records every request.

    ``/api/v1/reports/slow`` and ``/api/v1/slow`` never answer before :attr:`release`
    is set; ``/ws`` echoes text frames after a ``{"type": "hello"}``.
    """

    name: str
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        """host:port for an upstream list."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> StubService:
        """Listen on a free port."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        """Stop listening (connections are refused from now on)."""
        self.release.set()  # let held requests finish, or the clean-up waits for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(request.method, request.path, request.query_string, dict(request.headers), body)
        )
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_json({"type": "hello", "service": self.name})
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str(msg.data)
            return ws
        if request.path.endswith("/slow"):
            await self.release.wait()
        return web.json_response(
            {
                "service": self.name,
                "path": request.path,
                "request_id": request.headers.get("X-Request-ID", ""),
                "forwarded_for": request.headers.get("X-Forwarded-For", ""),
            }
        )

    def paths(self) -> list[str]:
        """Paths received, in order."""
        return [s.path for s in self.seen]


def mint(
    token_type: TokenType = "access",
    *,
    role: Role = "agent",
    ttl: float = 600,
    subject: str = "0190b4a2-0000-7000-8000-000000000001",
    tenant: str = "0190b4a2-0000-7000-8000-0000000000aa",
) -> str:
    """A token signed with the dev key, as chat would issue it (``ttl`` < 0: expired)."""
    issued = dt.datetime.now(dt.UTC)
    if ttl < 0:
        issued += dt.timedelta(seconds=ttl * 2)
    return load_issuer(AuthSettings(livedesk_env="test")).issue(
        subject=subject,
        tenant_id=tenant,
        role=role,
        token_type=token_type,
        ttl=dt.timedelta(seconds=abs(ttl)),
        now=issued,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bad_tokens() -> dict[str, str]:
    """Every kind of token the edge must refuse, by name."""
    good = mint()
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    other_key = ec.generate_private_key(ec.SECP256R1())
    now = int(dt.datetime.now(dt.UTC).timestamp())
    tampered = _b64(json.dumps({**claims, "role": "admin"}).encode())
    none_header = _b64(json.dumps({"alg": "none", "kid": "dev"}).encode())
    return {
        "garbage": "not-a-jwt",
        "two_parts": f"{header}.{payload}",
        "bad_base64": f"{header}.{payload}.***",
        "header_not_json": f"{_b64(b'nope')}.{payload}.{signature}",
        "expired": mint(ttl=-60),
        "bad_signature": jwt.encode(claims, other_key, algorithm="ES256", headers={"kid": "dev"}),
        "tampered_payload": f"{header}.{tampered}.{signature}",
        "unknown_kid": jwt.encode(claims, other_key, algorithm="ES256", headers={"kid": "k9"}),
        "alg_hs256": jwt.encode(claims, "s" * 64, algorithm="HS256", headers={"kid": "dev"}),
        "alg_none": f"{none_header}.{payload}.",
        "refresh_token": mint("refresh"),
        "ws_ticket_as_access": mint("ws_ticket"),
        "wrong_audience": _resign({**claims, "aud": "someone-else"}),
        "wrong_issuer": _resign({**claims, "iss": "evil"}),
        "no_tenant": _resign({k: v for k, v in claims.items() if k != "tid"}),
        "issued_in_future": _resign({**claims, "iat": now + 3600, "exp": now + 7200}),
    }


def _resign(claims: dict[str, Any]) -> str:
    """``claims`` correctly signed with the dev key (so only the claims are wrong)."""
    pem = (REPO / "libs/platform/src/livedesk/platform/auth/dev_private_key.pem").read_bytes()
    return jwt.encode(claims, pem, algorithm="ES256", headers={"kid": "dev"})
