"""`make up` from a clean checkout: everything comes up behind 127.0.0.1:8080, a visitor and an
agent talk through the gateway, and Ctrl-C stops every process cleanly."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from livedesk.integration_support.gateway import REPO, outside_worker_dir, require_nginx
from livedesk.platform.testing import wait_until
from livedesk.platform.testing.pytest_plugin import BusNames

pytestmark = pytest.mark.integration

GATEWAY = "http://127.0.0.1:8080"
PORTS = (8080, 8081, 8000, 8010, 8001, 50051, 8002)
PROCESSES = ("chat-a", "chat-b", "assignment", "analytics", "gateway")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _clean_checkout(target: Path) -> Path:
    """The files a clone of the working tree would have (tracked + new, never ignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    require_nginx()
    busy = [p for p in PORTS if _listening(p)]
    assert not busy, f"ports {busy} are in use: stop the running LiveDesk (make down) first"
    return _clean_checkout(tmp_path / "livedesk")


def _make_up(checkout: Path, env: dict[str, str], output: Path) -> subprocess.Popen[bytes]:
    """`make up` in its own process group, like a terminal's foreground job."""
    with output.open("wb") as log:
        return subprocess.Popen(
            ["make", "up"],
            cwd=checkout,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def _conversation(demo: dict[str, Any]) -> None:
    """A visitor and an agent talk through the gateway, routed by the real assignment engine."""
    async with aiohttp.ClientSession() as session:

        async def login(email: str) -> str:
            async with session.post(
                f"{GATEWAY}/api/v1/auth/login",
                json={"tenant": "demo", "email": email, "password": demo["password"]},
            ) as resp:
                token: str = (await _json(resp, 200))["access_token"]
                return token

        async def socket_for(token: str) -> aiohttp.ClientWebSocketResponse:
            async with session.post(
                f"{GATEWAY}/api/v1/ws/tickets", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                ticket = (await _json(resp, 201))["ticket"]
            ws = await session.ws_connect(f"{GATEWAY}/ws?ticket={ticket}", origin=GATEWAY)
            assert (await ws.receive_json(timeout=10))["type"] == "hello"
            return ws

        async def until(ws: aiohttp.ClientWebSocketResponse, **match: Any) -> dict[str, Any]:
            while True:
                frame: dict[str, Any] = await ws.receive_json(timeout=20)
                if all(frame.get(k) == v for k, v in match.items()):
                    return frame

        alice, bob = await login("alice@demo.livedesk.dev"), await login("bob@demo.livedesk.dev")
        consoles = [await socket_for(alice), await socket_for(bob)]
        for ws in consoles:
            await ws.send_json({"type": "presence", "status": "online", "id": "p"})
            await until(ws, type="presence")

        async with session.post(
            f"{GATEWAY}/api/v1/widget/sessions",
            json={"widget_key": demo["widget_key"], "name": "Vera"},
            headers={"Origin": GATEWAY},
        ) as resp:
            visitor = (await _json(resp, 201))["access_token"]
            assert resp.headers["Access-Control-Allow-Origin"] == GATEWAY
        async with session.post(
            f"{GATEWAY}/api/v1/conversations",
            json={"subject": "Where is my order?"},
            headers={"Authorization": f"Bearer {visitor}"},
        ) as resp:
            cid = (await _json(resp, 201))["id"]
        widget = await socket_for(visitor)
        await widget.send_json({"type": "subscribe", "conversation_id": cid, "after_seq": 0})
        await until(widget, type="subscribed")
        await widget.send_json(
            {"type": "send", "conversation_id": cid, "client_msg_id": "v1", "body": "Hello?"}
        )
        await until(widget, type="ack", client_msg_id="v1")

        # The assignment engine gives it to one of the two online agents.
        async def assigned() -> str | None:
            async with session.get(
                f"{GATEWAY}/api/v1/conversations/{cid}",
                headers={"Authorization": f"Bearer {visitor}"},
            ) as resp:
                body = await _json(resp, 200)
                agent: str | None = body["agent_id"] if body["status"] == "assigned" else None
                return agent

        agent_id = await wait_until(assigned, timeout=20, interval=0.2, what="assigned")
        ids = {u["id"]: e for e, u in demo["users"].items()}
        console = consoles[0] if ids[agent_id].startswith("alice") else consoles[1]
        await console.send_json({"type": "subscribe", "conversation_id": cid, "after_seq": 0})
        got = await until(console, type="messages", conversation_id=cid)
        assert [m["body"] for m in got["messages"]] == ["Hello?"]
        await console.send_json(
            {"type": "send", "conversation_id": cid, "client_msg_id": "a1", "body": "On its way!"}
        )
        reply = await until(widget, type="message")
        while reply["message"]["seq"] < 2:  # its own message comes back first
            reply = await until(widget, type="message")
        assert reply["message"]["body"] == "On its way!"
        assert reply["message"]["seq"] == 2
        assert reply["message"]["sender_kind"] == "agent"

        # History over REST and the reports API (analytics), both through the gateway.
        async with session.get(
            f"{GATEWAY}/api/v1/conversations/{cid}/messages",
            headers={"Authorization": f"Bearer {visitor}"},
        ) as resp:
            history = await _json(resp, 200)
            assert [m["body"] for m in history["items"]] == ["Hello?", "On its way!"]
        admin = await login("admin@demo.livedesk.dev")
        async with session.get(
            f"{GATEWAY}/api/v1/reports/overview", headers={"Authorization": f"Bearer {admin}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        for ws in (*consoles, widget):
            await ws.close()


async def test_make_up_runs_everything_behind_the_gateway_and_ctrl_c_stops_it(
    checkout: Path, bus_names: BusNames, pg_databases: Callable[[], Awaitable[str]]
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(
        bus_names.env(),
        CHAT_DATABASE_URL=await pg_databases(),
        ASSIGNMENT_DATABASE_URL=await pg_databases(),
        LOG_FORMAT="json",
    )
    output = checkout / "make-up.log"
    make = _make_up(checkout, env, output)
    try:

        async def banner() -> bool:
            if make.poll() is not None:
                raise AssertionError(f"make up exited {make.returncode}:\n{output.read_text()}")
            return "LiveDesk is up: http://127.0.0.1:8080" in output.read_text()

        await wait_until(banner, timeout=120, interval=0.2, what="make up ready")
        text = output.read_text()
        assert "alice@demo.livedesk.dev" in text
        assert "livedesk-demo" in text
        demo = json.loads((checkout / ".run" / "demo.json").read_text())
        await _conversation(demo)

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C
        make.wait(30)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
            pid_file = checkout / ".run" / "up.pid"
            if pid_file.exists():  # honcho runs in its own session
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        conf = checkout / ".run" / "gateway" / "nginx.conf"
        scratch = outside_worker_dir(conf) if conf.exists() else None
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    text = output.read_text()
    for name in PROCESSES:
        assert re.search(rf"{name}\.1 stopped \(rc=0\)", text), f"{name} did not stop cleanly"
    assert "LiveDesk stopped" in text
    assert [p for p in PORTS if _listening(p)] == []
