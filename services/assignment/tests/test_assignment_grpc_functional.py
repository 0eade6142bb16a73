"""The assignment gRPC API through a real server on an ephemeral port."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from livedesk.assignment.grpc_server import SERVICE_NAME, serve_grpc
from livedesk.assignment.servicer import AssignmentApi
from livedesk.assignment.testing import EngineKit
from livedesk.assignment_client import AssignmentClient
from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.events.v1.common_pb2 import Shift, ShiftException
from livedesk.platform.health import HealthChecks
from livedesk.platform.ids import uuid7_str
from livedesk.platform.testing import free_port, wait_until

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ONLINE, AWAY, OFFLINE = 1, 2, 3


@pytest.fixture
async def client(kit: EngineKit) -> AsyncIterator[AssignmentClient]:
    port = free_port()
    async with (
        serve_grpc("127.0.0.1", port, AssignmentApi(kit.engine), HealthChecks(), grace=1),
        AssignmentClient(f"127.0.0.1:{port}", timeout=5) as client,
    ):
        yield client


def code_of(err: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> grpc.StatusCode:
    return err.value.code()


async def test_health_follows_checks_and_reflection_lists_services(kit: EngineKit) -> None:
    healthy = True

    async def check() -> None:
        if not healthy:
            raise ConnectionError("dependency down")

    checks = HealthChecks()
    checks.add("dep", check)
    port = free_port()
    async with (
        serve_grpc("127.0.0.1", port, AssignmentApi(kit.engine), checks, grace=1),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)

        async def status(want: int) -> bool:
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
            )
            return bool(reply.status == want)

        await wait_until(lambda: status(SERVING), timeout=10, what="SERVING")
        healthy = False
        await wait_until(lambda: status(NOT_SERVING), timeout=10, what="NOT_SERVING")

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in replies for s in r.list_services_response.service]
        assert SERVICE_NAME in names
        assert "grpc.health.v1.Health" in names


async def test_profiles_status_and_listing(client: AssignmentClient) -> None:
    tenant = uuid7_str()
    profile = pb.AgentProfile(
        tenant_id=tenant,
        agent_id="ana",
        display_name="Ana",
        capacity=2,
        skills=["es", "billing"],
        team_ids=["support"],
        time_zone="Europe/Madrid",
        shifts=[Shift(weekday=d, start_minute=0, end_minute=1440) for d in range(1, 8)],  # type: ignore[arg-type]
        shift_exceptions=[ShiftException(date="2030-12-25", day_off=True)],
        priority_weight=3,
    )
    created = await client.upsert_agent_profile(profile)
    assert created.created
    assert created.profile.status == OFFLINE
    again = await client.upsert_agent_profile(profile)
    assert not again.created
    got = await client.get_agent_profile(tenant, "ana")
    assert list(got.skills) == ["billing", "es"]
    assert got.shift_exceptions[0].date == "2030-12-25"

    reply = await client.set_agent_status(tenant, "ana", ONLINE)
    assert (reply.status, reply.previous_status) == (ONLINE, OFFLINE)
    await client.upsert_agent_profile(pb.AgentProfile(tenant_id=tenant, agent_id="bob"))
    page = await client.list_agents(pb.ListAgentsRequest(tenant_id=tenant, page_size=1))
    assert [a.profile.agent_id for a in page.agents] == ["ana"]
    assert page.agents[0].on_shift
    rest = await client.list_agents(
        pb.ListAgentsRequest(tenant_id=tenant, page_size=1, page_token=page.next_page_token)
    )
    assert [a.profile.agent_id for a in rest.agents] == ["bob"]
    assert rest.next_page_token == ""
    by_status = pb.ListAgentsRequest(tenant_id=tenant, status=ONLINE)  # type: ignore[arg-type]
    online = await client.list_agents(by_status)
    assert [a.profile.agent_id for a in online.agents] == ["ana"]


async def test_queue_assign_transfer_release(kit: EngineKit, client: AssignmentClient) -> None:
    tenant = uuid7_str()
    for aid in ("a", "b"):
        await client.upsert_agent_profile(
            pb.AgentProfile(tenant_id=tenant, agent_id=aid, capacity=1, team_ids=["vip"])
        )
    for cid in ("c1", "c2"):
        await kit.engine.conversation_created(
            tenant, cid, team_id="", skills=(), priority=2,
            created=dt.datetime.now(dt.UTC), inbox_id="web",
        )  # fmt: skip
    queue = await client.list_queue(pb.ListQueueRequest(tenant_id=tenant, page_size=1))
    assert queue.total_size == 2
    assert [(q.conversation_id, q.position) for q in queue.conversations] == [("c1", 1)]
    second = await client.list_queue(
        pb.ListQueueRequest(tenant_id=tenant, page_size=1, page_token=queue.next_page_token)
    )
    assert [(q.conversation_id, q.position) for q in second.conversations] == [("c2", 2)]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.assign(
            pb.AssignConversationRequest(tenant_id=tenant, conversation_id="c1", agent_id="a")
        )
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION  # offline
    await client.set_agent_status(tenant, "a", AWAY)
    forced = await client.assign(
        pb.AssignConversationRequest(
            tenant_id=tenant, conversation_id="c1", agent_id="a", force=True, actor_id="boss"
        )
    )
    assert forced.assignment.agent_id == "a"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.assign(
            pb.AssignConversationRequest(
                tenant_id=tenant, conversation_id="c1", agent_id="b", force=True
            )
        )
    assert code_of(err) == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.transfer(
            pb.TransferConversationRequest(tenant_id=tenant, conversation_id="c1", agent_id="a")
        )
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION  # already has it

    await client.set_agent_status(tenant, "b", ONLINE)  # b takes c2 from the queue
    moved = await client.transfer(
        pb.TransferConversationRequest(tenant_id=tenant, conversation_id="c1", team_id="vip")
    )
    assert moved.WhichOneof("result") == "queued_conversation"  # b is full, a excluded
    assert moved.queued_conversation.team_id == "vip"
    released = await client.release(
        pb.ReleaseConversationRequest(tenant_id=tenant, conversation_id="c2", requeue=False)
    )
    assert released.released_agent_id == "b"
    listed = await client.list_queue(pb.ListQueueRequest(tenant_id=tenant))
    assert listed.total_size == 0  # c1 went to b as soon as b had room
    noop = await client.release(
        pb.ReleaseConversationRequest(tenant_id=tenant, conversation_id="c2")
    )
    assert noop.released_agent_id == ""


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.set_agent_status("", "a", ONLINE), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: c.set_agent_status("t", "a", 0), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: c.set_agent_status("t", "nobody", ONLINE), grpc.StatusCode.NOT_FOUND),
        (lambda c: c.get_agent_profile("t", "nobody"), grpc.StatusCode.NOT_FOUND),
        (
            lambda c: c.upsert_agent_profile(
                pb.AgentProfile(tenant_id="t", agent_id="a", time_zone="Nowhere/Land")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda c: c.upsert_agent_profile(
                pb.AgentProfile(
                    tenant_id="t", agent_id="a",
                    shifts=[Shift(weekday=1, start_minute=600, end_minute=500)],  # type: ignore[arg-type]
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda c: c.list_queue(pb.ListQueueRequest(tenant_id="t", page_size=-1)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda c: c.list_agents(pb.ListAgentsRequest(tenant_id="t", page_token="x")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda c: c.assign(pb.AssignConversationRequest(tenant_id="t", conversation_id="c")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda c: c.transfer(
                pb.TransferConversationRequest(tenant_id="t", conversation_id="c")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda c: c.release(
                pb.ReleaseConversationRequest(tenant_id="t", conversation_id="nope")
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (lambda c: c.report_console_presence("t", ["a"], ""), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)  # fmt: skip
async def test_error_codes(client: AssignmentClient, call: object, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(client)  # type: ignore[operator]
    assert code_of(err) == code


async def test_deadline_is_honoured(client: AssignmentClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.list_agents(pb.ListAgentsRequest(tenant_id="t"), timeout=0.000001)
    assert code_of(err) == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_presence_reports_keep_agents_online(
    kit: EngineKit, client: AssignmentClient
) -> None:
    tenant = uuid7_str()
    await client.upsert_agent_profile(pb.AgentProfile(tenant_id=tenant, agent_id="a", capacity=1))
    await client.set_agent_status(tenant, "a", ONLINE)
    kit.engine.config = type(kit.engine.config)(presence_grace_seconds=0.2)
    await client.report_console_presence(tenant, ["a"], "chat-1")
    # Without reports the agent becomes away after the grace period.
    await wait_until(kit.engine.sweep_presence, timeout=5, what="auto away")
    assert (await client.get_agent_profile(tenant, "a")).status == AWAY
    restored = await client.report_console_presence(tenant, ["a", "unknown"], "chat-1")
    assert list(restored.restored_agent_ids) == ["a"]
    assert (await client.get_agent_profile(tenant, "a")).status == ONLINE
