"""The whole product path: an agent comes online, a visitor writes, the engine routes, they talk."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from livedesk.chat.directory import Directory
from livedesk.chat.testing import make_org
from livedesk.integration_support.stack import running_stack
from livedesk.platform.auth import AuthSettings, load_issuer
from livedesk.platform.postgres import open_database
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.testing.servers import Servers

pytestmark = pytest.mark.integration


async def _frame(ws: aiohttp.ClientWebSocketResponse, kind: str, **match: Any) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            frame: dict[str, Any] = json.loads((await ws.receive()).data)
            if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                return frame


async def test_agent_online_visitor_routed_and_they_talk(
    tmp_path: Path,
    servers: Servers,
    bus_names: BusNames,
    pg_databases: Callable[[], Awaitable[str]],
) -> None:
    async with running_stack(tmp_path, servers, bus_names, pg_databases) as stack:
        pool = await open_database(stack.chat_db, [])
        org = await make_org(Directory(pool), "acme")
        await pool.close()
        issuer = load_issuer(AuthSettings(livedesk_env="test"))

        def token(user_id: object, role: str) -> str:
            return issuer.issue(
                subject=str(user_id),
                tenant_id=str(org.tenant.id),
                role=role,  # type: ignore[arg-type]
                token_type="access",
                ttl=dt.timedelta(minutes=10),
            )

        base = stack.chat.base_url
        admin = {"Authorization": f"Bearer {token(org.admin.id, 'admin')}"}
        agent = {"Authorization": f"Bearer {token(org.agent.id, 'agent')}"}
        async with aiohttp.ClientSession() as session:
            # The admin gives the agent a routing profile (chat -> assignment over gRPC).
            async with session.put(
                f"{base}/api/v1/agents/{org.agent.id}/routing",
                json={"capacity": 2, "team_ids": [str(org.inbox.team_id)]},
                headers=admin,
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["capacity"] == 2

            # The agent opens the console and goes online.
            async with session.post(f"{base}/api/v1/ws/tickets", headers=agent) as resp:
                ticket = (await resp.json())["ticket"]
            console = await session.ws_connect(f"{base}/ws?ticket={ticket}")
            await _frame(console, "hello")
            await console.send_json({"type": "presence", "status": "online", "id": "p"})
            await _frame(console, "presence", ref="p")

            # A visitor writes in.
            async with session.post(
                f"{base}/api/v1/widget/sessions", json={"widget_key": org.inbox.widget_key}
            ) as resp:
                visitor = await resp.json()
            vauth = {"Authorization": f"Bearer {visitor['access_token']}"}
            async with session.post(
                f"{base}/api/v1/conversations", json={"subject": "refund"}, headers=vauth
            ) as resp:
                conversation = await resp.json()

            # The engine routes it to the agent; the console hears it.
            notice = await _frame(console, "conversation", event="assigned")
            assert notice["conversation"]["id"] == conversation["id"]
            assert notice["conversation"]["agent_id"] == str(org.agent.id)

            # They talk, live.
            async with session.post(f"{base}/api/v1/ws/tickets", headers=vauth) as resp:
                ticket = (await resp.json())["ticket"]
            widget = await session.ws_connect(f"{base}/ws?ticket={ticket}")
            await _frame(widget, "hello")
            for ws in (widget, console):
                await ws.send_json({"type": "subscribe", "conversation_id": conversation["id"]})
                await _frame(ws, "subscribed")
            await console.send_json(
                {"type": "send", "conversation_id": conversation["id"], "client_msg_id": "a1",
                 "body": "Hi, I can help with the refund."}
            )  # fmt: skip
            got = await _frame(widget, "message")
            assert got["message"]["sender_id"] == str(org.agent.id)
            await widget.close()
            await console.close()
