"""Chat as real processes: two pods, a pod killed mid-conversation, RabbitMQ cut away."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from livedesk.chat.directory import Directory
from livedesk.chat.testing import Org, make_org
from livedesk.integration_support.assigner import publish_assignment
from livedesk.integration_support.chat_client import ChatClient
from livedesk.integration_support.chat_pods import seeded_chat
from livedesk.platform.auth import AuthSettings, load_issuer
from livedesk.platform.bus import Envelope, connect
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing import ServiceProcess, TcpProxy, free_port, wait_until
from livedesk.platform.testing.bus import running_consumer
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.testing.servers import Servers

pytestmark = pytest.mark.integration


@dataclass
class Pods:
    pods: list[ServiceProcess]
    org: Org
    database: str

    def urls(self) -> list[str]:
        """Base URLs of the pods still running."""
        return [p.base_url for p in self.pods if p.proc is not None and p.proc.poll() is None]


def _pod(name: str, tmp_path: Path, env: dict[str, str]) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        "livedesk.chat",
        {**env, "PORT": str(port), "POD_ID": name},
        tmp_path / f"{name}.log",
        port,
    )


@pytest.fixture
async def pods(
    tmp_path: Path,
    servers: Servers,
    bus_names: BusNames,
    pg_databases: Callable[[], Awaitable[str]],
) -> AsyncIterator[Pods]:
    database = await pg_databases()
    org, env = await seeded_chat(database, servers, bus_names)
    running = Pods([_pod("pod-a", tmp_path, env), _pod("pod-b", tmp_path, env)], org, database)
    try:
        for pod in running.pods:
            pod.start()
        for pod in running.pods:
            await pod.wait_ready()
        yield running
    finally:
        for pod in running.pods:
            pod.stop_quietly()


async def _open(session: aiohttp.ClientSession, pods: Pods) -> tuple[str, dict[str, str]]:
    base = pods.urls()[0]
    async with session.post(
        f"{base}/api/v1/widget/sessions", json={"widget_key": pods.org.inbox.widget_key}
    ) as resp:
        visitor = await resp.json()
    async with session.post(
        f"{base}/api/v1/conversations",
        json={"subject": "help"},
        headers={"Authorization": f"Bearer {visitor['access_token']}"},
    ) as resp:
        conversation = await resp.json()
    return visitor["access_token"], conversation


def _agent_token(org: Org) -> str:
    return load_issuer(AuthSettings(livedesk_env="test")).issue(
        subject=str(org.agent.id),
        tenant_id=str(org.tenant.id),
        role="agent",
        token_type="access",
        ttl=dt.timedelta(minutes=10),
    )


async def _assigned(session: aiohttp.ClientSession, pods: Pods, cid: str, token: str) -> bool:
    async with session.get(
        f"{pods.urls()[0]}/api/v1/conversations/{cid}",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        return resp.status == 200 and (await resp.json())["status"] == "assigned"


async def test_visitor_and_agent_on_different_pods_exchange_in_order(
    pods: Pods, bus_names: BusNames
) -> None:
    async with aiohttp.ClientSession() as session:
        visitor_token, conversation = await _open(session, pods)
        cid = conversation["id"]
        agent_token = _agent_token(pods.org)
        await publish_assignment(bus_names, conversation, str(pods.org.agent.id))
        await wait_until(
            lambda: _assigned(session, pods, cid, agent_token), timeout=20, what="assigned"
        )
        pod_a, pod_b = pods.urls()
        visitor = ChatClient(session, visitor_token, lambda: [pod_a])
        agent = ChatClient(session, agent_token, lambda: [pod_b])
        for client in (visitor, agent):
            await client.connect()
            await client.subscribe(cid)
        for i in range(20):
            await visitor.send(cid, f"v{i}")
            await agent.send(cid, f"a{i}")
        expected = [f"{who}{i}" for i in range(20) for who in "va"]

        async def both_have_all() -> bool:
            return visitor.bodies(cid) == expected and agent.bodies(cid) == expected

        await wait_until(both_have_all, timeout=20, what="every message on both pods")
        assert visitor.seqs(cid) == list(range(1, 41))
        await visitor.close()
        await agent.close()


async def test_pod_killed_mid_conversation_client_resumes_exactly_once(
    pods: Pods, bus_names: BusNames
) -> None:
    async with aiohttp.ClientSession() as session:
        visitor_token, conversation = await _open(session, pods)
        cid = conversation["id"]
        agent_token = _agent_token(pods.org)
        pod_a, pod_b = pods.pods
        visitor = ChatClient(session, visitor_token, pods.urls)  # prefers pod A while it lives
        agent = ChatClient(session, agent_token, lambda: [pod_b.base_url])
        await visitor.connect()
        await visitor.subscribe(cid)
        await publish_assignment(bus_names, conversation, str(pods.org.agent.id))
        await wait_until(
            lambda: _assigned(session, pods, cid, agent_token), timeout=20, what="assigned"
        )
        await agent.connect()
        await agent.subscribe(cid)

        acked: list[int] = []

        async def chatter() -> None:
            for i in range(60):
                ack = await visitor.send(cid, f"m{i}", timeout=60)
                acked.append(ack["seq"])

        talking = asyncio.create_task(chatter())
        await wait_until(lambda: _at_least(acked, 20), timeout=20, what="20 acked")
        pod_a.kill()  # SIGKILL mid-stream: no drain, no goodbye
        await asyncio.wait_for(talking, 90)

        expected = [f"m{i}" for i in range(60)]

        async def complete() -> bool:
            return visitor.bodies(cid) == expected and agent.bodies(cid) == expected

        await wait_until(complete, timeout=30, what="both sides complete")

        async def reconnected() -> bool:
            return visitor.connections >= 2

        # It really reconnected, to the surviving pod.
        await wait_until(reconnected, timeout=30, what="visitor on the other pod")
        assert acked == list(range(1, 61))  # retried sends never made a second message
        assert visitor.seqs(cid) == agent.seqs(cid) == list(range(1, 61))
        await visitor.close()
        await agent.close()


async def _at_least(items: list[int], n: int) -> bool:
    return len(items) >= n


async def test_messages_accepted_while_rabbitmq_is_cut_reach_consumers_after(
    tmp_path: Path,
    servers: Servers,
    bus_names: BusNames,
    pg_databases: Callable[[], Awaitable[str]],
) -> None:
    database = await pg_databases()
    pool = await open_database(database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    org = await make_org(Directory(pool), "acme")
    await pool.close()
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    env = {
        **bus_names.env(),
        "AMQP_URL": bus_names.amqp_url.replace(":5672", f":{proxy.port}"),
        "DATABASE_URL": database,
        "REDIS_URL": servers.redis_url,
        "DB_AUTO_CREATE": "false",
        "LIVEDESK_ENV": "test",
    }
    pod = _pod("pod-cut", tmp_path, env)
    received: set[str] = set()

    async def handler(env: Envelope) -> None:
        received.add(env.message_created.message_id)

    consumer_conn = await connect(bus_names.amqp_url, "test-consumer")
    try:
        async with running_consumer(
            consumer_conn, bus_names, handler, base="observer", types=("message.created",)
        ):
            pod.start()
            await pod.wait_ready()
            pods = Pods([pod], org, database)
            async with aiohttp.ClientSession() as session:
                visitor_token, conversation = await _open(session, pods)
                proxy.cut()
                sent: list[str] = []
                for i in range(30):
                    async with session.post(
                        f"{pod.base_url}/api/v1/conversations/{conversation['id']}/messages",
                        json={"body": f"during cut {i}", "client_msg_id": f"c{i}"},
                        headers={"Authorization": f"Bearer {visitor_token}"},
                    ) as resp:
                        assert resp.status == 201  # chat keeps working without the broker
                        sent.append((await resp.json())["id"])
                proxy.heal()

                async def all_arrived() -> bool:
                    return set(sent) <= received

                await wait_until(all_arrived, timeout=60, what="message.created after heal")
    finally:
        pod.stop_quietly()
        await consumer_conn.close()
        await proxy.close()
