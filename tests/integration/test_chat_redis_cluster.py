"""Two real chat pods on a real Redis Cluster (REDIS_CLUSTER=true): sharded fan-out end to end."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from livedesk.chat.fanout import conversation_channel
from livedesk.chat.testing import Org
from livedesk.integration_support.assigner import publish_assignment
from livedesk.integration_support.chat_client import ChatClient
from livedesk.integration_support.chat_pods import seeded_chat
from livedesk.platform.auth import AuthSettings, load_issuer
from livedesk.platform.redis import connect_redis_cluster
from livedesk.platform.testing import ServiceProcess, free_port, wait_until
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.testing.redis_cluster import RedisClusterProcesses, redis_cluster
from livedesk.platform.testing.servers import Servers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="needs redis-server and redis-cli",
    ),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
async def pods(
    tmp_path: Path,
    servers: Servers,
    bus_names: BusNames,
    pg_databases: Callable[[], Awaitable[str]],
    cluster: RedisClusterProcesses,
) -> AsyncIterator[tuple[Org, list[ServiceProcess]]]:
    org, env = await seeded_chat(await pg_databases(), servers, bus_names)
    env = {**env, "REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"}
    running = []
    for name in ("pod-a", "pod-b"):
        port = free_port()
        running.append(
            ServiceProcess(
                "livedesk.chat",
                {**env, "PORT": str(port), "POD_ID": name},
                tmp_path / f"{name}.log",
                port,
            )
        )
    try:
        for pod in running:
            pod.start()
        for pod in running:
            await pod.wait_ready()
        yield org, running
    finally:
        for pod in running:
            pod.stop_quietly()


def _agent_token(org: Org) -> str:
    return load_issuer(AuthSettings(livedesk_env="test")).issue(
        subject=str(org.agent.id),
        tenant_id=str(org.tenant.id),
        role="agent",
        token_type="access",
        ttl=dt.timedelta(minutes=10),
    )


async def test_visitor_and_agent_on_pods_of_a_cluster_exchange_in_order(
    pods: tuple[Org, list[ServiceProcess]],
    bus_names: BusNames,
    cluster: RedisClusterProcesses,
) -> None:
    org, (pod_a, pod_b) = pods
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{pod_a.base_url}/api/v1/widget/sessions", json={"widget_key": org.inbox.widget_key}
        ) as resp:
            visitor_token = (await resp.json())["access_token"]
        async with session.post(
            f"{pod_a.base_url}/api/v1/conversations",
            json={"subject": "help"},
            headers={"Authorization": f"Bearer {visitor_token}"},
        ) as resp:
            conversation = await resp.json()
        cid = conversation["id"]
        agent_token = _agent_token(org)
        await publish_assignment(bus_names, conversation, str(org.agent.id))

        async def assigned() -> bool:
            async with session.get(
                f"{pod_b.base_url}/api/v1/conversations/{cid}",
                headers={"Authorization": f"Bearer {agent_token}"},
            ) as resp:
                return resp.status == 200 and (await resp.json())["status"] == "assigned"

        await wait_until(assigned, timeout=20, what="assigned")
        # Tickets are single-use keys on the cluster (SET NX): each connect takes one.
        visitor = ChatClient(session, visitor_token, lambda: [pod_a.base_url])
        agent = ChatClient(session, agent_token, lambda: [pod_b.base_url])
        for client in (visitor, agent):
            await client.connect()
            await client.subscribe(cid)
        # Both pods subscribe the conversation's channel on the node that owns its slot.
        channel = conversation_channel(uuid.UUID(cid))
        owner = await cluster.owner(channel)

        async def both_pods_subscribed() -> bool:
            return await cluster.subscriber_count(owner, channel) == 2

        await wait_until(both_pods_subscribed, what="both pods on the channel's owner")

        # One at a time, each waited for on the other side: only live fan-out
        # delivers it (no later message exposes a gap that a fetch would fill).
        for i in range(5):
            await visitor.send(cid, f"v{i}")
            await wait_until(
                _has(agent, cid, f"v{i}"), timeout=10, what=f"v{i} reaches the agent on pod B"
            )
            await agent.send(cid, f"a{i}")
            await wait_until(
                _has(visitor, cid, f"a{i}"), timeout=10, what=f"a{i} reaches the visitor on pod A"
            )
        for i in range(5, 20):
            await visitor.send(cid, f"v{i}")
            await agent.send(cid, f"a{i}")
        expected = [f"{who}{i}" for i in range(20) for who in "va"]

        async def both_have_all() -> bool:
            return visitor.bodies(cid) == expected and agent.bodies(cid) == expected

        await wait_until(both_have_all, timeout=20, what="every message on both pods")
        assert visitor.seqs(cid) == list(range(1, 41))

        # The hot cache wrote through to the cluster (its keys' slot, not the channel's).
        redis = await connect_redis_cluster(cluster.url)
        try:
            assert await redis.zcard(f"livedesk:chat:hot:{{{cid}}}") == 40
        finally:
            await redis.aclose()
        await visitor.close()
        await agent.close()


def _has(client: ChatClient, cid: str, body: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return body in client.bodies(cid)

    return probe
