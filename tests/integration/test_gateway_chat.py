"""Real chat pods behind the real gateway: messaging across pods, a pod killed, resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from livedesk.chat.testing import PASSWORD, Org
from livedesk.integration_support.assigner import publish_assignment
from livedesk.integration_support.chat_client import ChatClient
from livedesk.integration_support.chat_pods import seeded_chat
from livedesk.integration_support.gateway import Gateway, StubService, start_gateway
from livedesk.platform.testing import ServiceProcess, free_port, wait_until
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.testing.servers import Servers

pytestmark = pytest.mark.integration


@dataclass
class Site:
    gateway: Gateway
    pods: list[ServiceProcess]
    org: Org

    def pod_at(self, upstream: str) -> ServiceProcess:
        """The pod listening at ``host:port``."""
        return next(p for p in self.pods if upstream.endswith(f":{p.http_port}"))


@pytest.fixture
async def site(
    tmp_path: Path,
    servers: Servers,
    bus_names: BusNames,
    pg_databases: Callable[[], Awaitable[str]],
) -> AsyncIterator[Site]:
    database = await pg_databases()
    org, base_env = await seeded_chat(database, servers, bus_names)
    env = {
        **base_env,
        # No assignment service here: fail fast instead of waiting for it.
        "ASSIGNMENT_GRPC_URL": f"127.0.0.1:{free_port()}",
    }
    pods = []
    for name in ("pod-a", "pod-b"):
        port = free_port()
        pods.append(
            ServiceProcess(
                "livedesk.chat",
                {**env, "PORT": str(port), "POD_ID": name},
                tmp_path / f"{name}.log",
                port,
            )
        )
    analytics = await StubService("analytics").start()
    gateway: Gateway | None = None
    try:
        for pod in pods:
            pod.start()
        for pod in pods:
            await pod.wait_ready()
        gateway = await start_gateway(
            tmp_path,
            chat=[f"127.0.0.1:{p.http_port}" for p in pods],
            analytics=[analytics.address],
            fail_timeout="30s",
        )
        yield Site(gateway, pods, org)
    finally:
        if gateway is not None:
            gateway.stop()
        for pod in pods:
            pod.stop_quietly()
        await analytics.stop()


async def _start_conversation(
    session: aiohttp.ClientSession, site: Site, bus: BusNames
) -> tuple[str, str, str]:
    """Through the gateway: a visitor opens a conversation, the agent signs in; both tokens."""
    url = site.gateway.url
    async with session.post(
        f"{url}/api/v1/widget/sessions", json={"widget_key": site.org.inbox.widget_key}
    ) as resp:
        assert resp.status == 201, await resp.text()
        visitor = (await resp.json())["access_token"]
    async with session.post(
        f"{url}/api/v1/conversations",
        json={"subject": "help"},
        headers={"Authorization": f"Bearer {visitor}"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        conversation = await resp.json()
    async with session.post(
        f"{url}/api/v1/auth/login",
        json={"tenant": "acme", "email": site.org.agent.email, "password": PASSWORD},
    ) as resp:
        assert resp.status == 200, await resp.text()
        agent = (await resp.json())["access_token"]
    await publish_assignment(bus, conversation, str(site.org.agent.id))

    async def assigned() -> bool:
        async with session.get(
            f"{url}/api/v1/conversations/{conversation['id']}",
            headers={"Authorization": f"Bearer {agent}"},
        ) as resp:
            return resp.status == 200 and (await resp.json())["status"] == "assigned"

    await wait_until(assigned, timeout=20, what="assigned")
    return visitor, agent, conversation["id"]


def _ws_upstreams(gateway: Gateway) -> list[str]:
    return [e["upstream"] for e in gateway.access_log() if e["path"] == "/ws"]


async def test_visitor_and_agent_on_different_pods_talk_through_the_gateway(
    site: Site, bus_names: BusNames
) -> None:
    async with aiohttp.ClientSession() as session:
        visitor_token, agent_token, cid = await _start_conversation(session, site, bus_names)
        visitor = ChatClient(session, visitor_token, lambda: [site.gateway.url])
        agent = ChatClient(session, agent_token, lambda: [site.gateway.url])
        for client in (visitor, agent):
            await client.connect()
            await client.subscribe(cid)
        for i in range(10):
            await visitor.send(cid, f"v{i}")
            await agent.send(cid, f"a{i}")
        expected = [f"{who}{i}" for i in range(10) for who in "va"]

        async def both_have_all() -> bool:
            return visitor.bodies(cid) == expected and agent.bodies(cid) == expected

        await wait_until(both_have_all, timeout=20, what="every message on both sides")
        assert visitor.seqs(cid) == agent.seqs(cid) == list(range(1, 21))
        await visitor.close()
        await agent.close()

    # The access log line of a WebSocket is written when it closes: least_conn put the two
    # sockets on different pods, so the messages crossed pods through Redis.
    async def two_sockets_logged() -> list[str]:
        return (
            [u for u in _ws_upstreams(site.gateway) if u]
            if len(_ws_upstreams(site.gateway)) >= 2
            else []
        )

    upstreams = await wait_until(two_sockets_logged, timeout=10, what="two /ws log lines")
    assert len(set(upstreams)) == 2


async def test_pod_killed_new_requests_go_to_the_other_and_clients_resume_exactly_once(
    site: Site, bus_names: BusNames
) -> None:
    async with aiohttp.ClientSession() as session:
        visitor_token, agent_token, cid = await _start_conversation(session, site, bus_names)
        visitor = ChatClient(session, visitor_token, lambda: [site.gateway.url])
        agent = ChatClient(session, agent_token, lambda: [site.gateway.url])
        for client in (visitor, agent):
            await client.connect()
            await client.subscribe(cid)

        acked: list[int] = []

        async def chatter() -> None:
            for i in range(40):
                ack = await visitor.send(cid, f"m{i}", timeout=60)
                acked.append(ack["seq"])

        talking = asyncio.create_task(chatter())

        async def some_acked() -> bool:
            return len(acked) >= 10

        await wait_until(some_acked, timeout=20, what="10 acked")
        # Kill the pod the visitor writes through (its hello named it).
        victim = next(p for p in site.pods if p.env.get("POD_ID") == visitor.pod)
        survivor = next(p for p in site.pods if p is not victim)
        on_victim = [c for c in (visitor, agent) if c.pod == visitor.pod]
        victim.kill()  # SIGKILL: no drain, no goodbye
        await asyncio.wait_for(talking, 60)

        expected = [f"m{i}" for i in range(40)]

        async def complete() -> bool:
            return visitor.bodies(cid) == expected and agent.bodies(cid) == expected

        try:
            await wait_until(complete, timeout=30, what="both sides complete")
        except TimeoutError as exc:
            raise AssertionError(
                f"visitor seqs {visitor.seqs(cid)} bodies {visitor.bodies(cid)}; "
                f"agent seqs {agent.seqs(cid)} bodies {agent.bodies(cid)}; "
                f"acked {acked}; connections {visitor.connections}/{agent.connections}; "
                f"reconnect errors {visitor.reconnect_error!r}/{agent.reconnect_error!r}"
            ) from exc

        async def moved() -> bool:  # the dead pod's clients are back, on the other one
            return all(c.connections == 2 for c in on_victim)

        await wait_until(moved, timeout=30, what="reconnected through the gateway")
        assert acked == list(range(1, 41))  # retried sends never made a second message
        assert visitor.seqs(cid) == agent.seqs(cid) == list(range(1, 41))
        # Exactly the clients that were on the dead pod reconnected, once each.
        assert visitor.connections + agent.connections == 2 + len(on_victim)
        assert visitor.connections == 2

        # New REST requests and new sockets all land on the surviving pod.
        survivor_at = f"127.0.0.1:{survivor.http_port}"
        for i in range(10):
            async with session.get(
                f"{site.gateway.url}/api/v1/conversations/{cid}/messages?limit=50",
                headers={"Authorization": f"Bearer {agent_token}", "X-Request-ID": f"after-{i}"},
            ) as resp:
                assert resp.status == 200
                assert len((await resp.json())["items"]) == 40
        late = ChatClient(session, agent_token, lambda: [site.gateway.url])
        await late.connect()
        await late.subscribe(cid)

        async def late_has_all() -> bool:
            return late.bodies(cid) == expected

        await wait_until(late_has_all, timeout=10, what="a new socket replays everything")
        for client in (visitor, agent, late):
            await client.close()

    log = {e["request_id"]: e for e in site.gateway.access_log()}
    for i in range(10):
        assert log[f"after-{i}"]["upstream"].endswith(survivor_at)
        assert log[f"after-{i}"]["status"] == 200
