"""Chat keeps working while analytics is stopped; analytics catches up exactly when it returns."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from livedesk.chat.directory import Directory
from livedesk.chat.testing import make_org
from livedesk.integration_support.stack import running_stack
from livedesk.platform.postgres import open_database
from livedesk.platform.testing import ServiceProcess, wait_until
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.testing.servers import Servers

pytestmark = pytest.mark.integration

MESSAGES = 200


async def _ingested(base_url: str, event_type: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    pattern = (
        rf'^livedesk_analytics_events_ingested_total\{{type="{re.escape(event_type)}"\}} (\S+)$'
    )
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_chat_unaffected_while_analytics_is_down_and_counts_match_after(
    tmp_path: Path,
    servers: Servers,
    bus_names: BusNames,
    pg_databases: Callable[[], Awaitable[str]],
) -> None:
    async with running_stack(tmp_path, servers, bus_names, pg_databases) as stack:
        pool = await open_database(stack.chat_db, [])
        org = await make_org(Directory(pool), "acme")
        await pool.close()
        base = stack.chat.base_url
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base}/api/v1/widget/sessions", json={"widget_key": org.inbox.widget_key}
            ) as resp:
                auth = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
            async with session.post(f"{base}/api/v1/conversations", json={}, headers=auth) as resp:
                conversation = await resp.json()

            # Analytics goes away (its queue stays, durable, bound to every event).
            assert stack.analytics.terminate(timeout=10) == 0
            for i in range(MESSAGES):
                async with session.post(
                    f"{base}/api/v1/conversations/{conversation['id']}/messages",
                    json={"body": f"while analytics is down {i}", "client_msg_id": f"m{i}"},
                    headers=auth,
                ) as resp:
                    assert resp.status == 201  # chat does not notice

            # Analytics comes back on the same data and drains what waited for it.
            back = ServiceProcess(
                "livedesk.analytics",
                stack.analytics.env,
                tmp_path / "analytics-again.log",
                stack.analytics.http_port,
            ).start()
            try:
                await back.wait_ready(timeout=60)

                async def caught_up() -> bool:
                    return await _ingested(back.base_url, "message.created") >= MESSAGES

                await wait_until(caught_up, timeout=60, what="analytics caught up")
                assert await _ingested(back.base_url, "message.created") == MESSAGES
            finally:
                back.stop_quietly()
