"""The three services as real processes: ready, one real event end to end, clean stop."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from livedesk.chat.directory import Directory
from livedesk.chat.testing import make_org
from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.assignment.v1.assignment_service_pb2_grpc import AssignmentServiceStub
from livedesk.integration_support.stack import running_stack
from livedesk.platform.postgres import open_database
from livedesk.platform.testing import wait_until
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.testing.servers import Servers

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def _metric(base_url: str, name: str, labels: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_services_become_ready_exchange_an_event_and_stop_on_sigterm(
    tmp_path: Path,
    servers: Servers,
    bus_names: BusNames,
    pg_databases: Callable[[], Awaitable[str]],
) -> None:
    async with running_stack(tmp_path, servers, bus_names, pg_databases) as stack:
        pool = await open_database(stack.chat_db, [])
        org = await make_org(Directory(pool), "acme")
        await pool.close()
        async with aiohttp.ClientSession() as session:
            # A website visitor opens a conversation: chat commits it with its event
            # and the outbox relay publishes conversation.created.
            async with session.post(
                f"{stack.chat.base_url}/api/v1/widget/sessions",
                json={"widget_key": org.inbox.widget_key},
            ) as resp:
                visitor = await resp.json()
            auth = {"Authorization": f"Bearer {visitor['access_token']}"}
            async with session.post(
                f"{stack.chat.base_url}/api/v1/conversations",
                json={"subject": "where is my order?", "priority": "high"},
                headers={**auth, "traceparent": TRACEPARENT},
            ) as resp:
                assert resp.status == 201, await resp.text()
                conversation = await resp.json()

            # assignment records it, once, in its own database; no agent is online,
            # so it queues it and says so; chat applies that and tells the visitor.
            async def recorded() -> asyncpg.Record | None:
                conn = await asyncpg.connect(stack.assignment_db)
                try:
                    return await conn.fetchrow(
                        "SELECT * FROM conversations WHERE conversation_id = $1",
                        conversation["id"],
                    )
                finally:
                    await conn.close()

            row = await wait_until(recorded, timeout=20, what="assignment recorded it")
            assert row is not None
            assert str(row["tenant_id"]) == str(org.tenant.id)

            async def queued_position() -> int | None:
                async with session.get(
                    f"{stack.chat.base_url}/api/v1/conversations/{conversation['id']}",
                    headers=auth,
                ) as resp:
                    position: int | None = (await resp.json())["queue_position"]
                    return position

            assert await wait_until(queued_position, timeout=20, what="queue position") == 1

        # The caller's trace went through the outbox and the broker into the consumer's logs.
        async def handled_traces() -> list[object]:
            return [
                e.get("trace_id")
                for e in stack.assignment.log_events()
                if e.get("event") == "event_handled"
                and e.get("event_type") == "conversation.created"
            ]

        assert await wait_until(handled_traces, timeout=10, what="handled log") == [TRACE_ID]

        # analytics has it in ClickHouse.
        async def ingested() -> float:
            return await _metric(
                stack.analytics.base_url,
                "livedesk_analytics_events_ingested_total",
                'type="conversation.created"',
            )

        assert await wait_until(ingested, timeout=20, what="analytics ingested the event") == 1.0

        # The gRPC server answers the standard health protocol and real status codes.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.assignment_grpc_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)

            async def serving() -> bool:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            await wait_until(serving, timeout=10, what="gRPC health SERVING")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await AssignmentServiceStub(ch).ListQueue(pb.ListQueueRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Every service drains and exits 0 on SIGTERM.
        for process in (stack.chat, stack.assignment, stack.analytics):
            assert process.terminate(timeout=10) == 0, process.output()[-3000:]
            assert any(e.get("event") == "stopped" for e in process.log_events())
