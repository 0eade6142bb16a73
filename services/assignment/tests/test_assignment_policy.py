"""The routing policy, decided by the real script on real Redis and recorded in PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from livedesk.assignment.errors import AlreadyExists, FailedPrecondition, NotFound
from livedesk.assignment.shifts import Shift
from livedesk.assignment.store import Change
from livedesk.assignment.testing import EngineKit, agent_row
from livedesk.contracts.events.v1.common_pb2 import QueueReason
from livedesk.contracts.events.v1.conversation_pb2 import ConversationQueued
from livedesk.platform.bus import decode
from livedesk.platform.ids import uuid7_str

pytestmark = pytest.mark.integration

ONLINE, AWAY, OFFLINE = 1, 2, 3
URGENT, HIGH, NORMAL, LOW = 4, 3, 2, 1


class Desk:
    """One tenant on the engine, with short helpers."""

    def __init__(self, kit: EngineKit) -> None:
        self.kit = kit
        self.engine = kit.engine
        self.tenant = uuid7_str()

    async def agent(self, agent_id: str, status: int = ONLINE, **kw: object) -> None:
        await self.engine.upsert_agent(agent_row(self.tenant, agent_id, **kw))  # type: ignore[arg-type]
        await self.engine.set_status(self.tenant, agent_id, status)

    async def conv(
        self, cid: str, *, skills: tuple[str, ...] = (), team: str = "", priority: int = NORMAL
    ) -> Change:
        res = await self.engine.conversation_created(
            self.tenant,
            cid,
            team_id=team,
            skills=skills,
            priority=priority,
            created=dt.datetime.now(dt.UTC),
            inbox_id="web",
        )
        return next(c for c in res.changes if c.conversation_id == cid)

    async def owner(self, cid: str) -> str | None:
        row = await self.kit.pool.fetchrow(
            "SELECT state, agent_id FROM conversations"
            " WHERE tenant_id = $1 AND conversation_id = $2",
            self.tenant,
            cid,
        )
        assert row is not None
        return row["agent_id"] if row["state"] == "assigned" else None


@pytest.fixture
def desk(kit: EngineKit) -> Desk:
    return Desk(kit)


async def test_skills_must_all_match(desk: Desk) -> None:
    await desk.agent("billing", skills=("billing",))
    await desk.agent("both", skills=("billing", "es"))
    assert (await desk.conv("c1", skills=("billing", "es"))).agent_id == "both"
    assert (await desk.conv("c2", skills=("fr",))).state == "waiting"


async def test_team_requirement(desk: Desk) -> None:
    await desk.agent("sales", teams=("sales",))
    await desk.agent("support", teams=("support",))
    assert (await desk.conv("c1", team="support")).agent_id == "support"
    assert (await desk.conv("c2", team="sales")).agent_id == "sales"
    queued = await desk.conv("c3", team="legal")
    assert (queued.state, queued.team_id, queued.position) == ("waiting", "legal", 1)


async def test_only_online_on_shift_agents_with_capacity(desk: Desk) -> None:
    now = dt.datetime.now(dt.UTC)
    other_day = (now.isoweekday() % 7) + 1
    await desk.agent("away", AWAY)
    await desk.agent("offline", OFFLINE)
    await desk.agent("off-shift", shifts=(Shift(other_day, 0, 1440),))
    await desk.agent("zero", capacity=0)
    await desk.agent("one", capacity=1)
    assert (await desk.conv("c1")).agent_id == "one"
    assert (await desk.conv("c2")).state == "waiting"  # "one" is full, nobody else eligible


async def test_least_loaded_then_longest_idle(desk: Desk) -> None:
    await desk.agent("a", capacity=5)
    await desk.agent("b", capacity=5)
    first = (await desk.conv("c1")).agent_id
    second = (await desk.conv("c2")).agent_id
    assert {first, second} == {"a", "b"}  # least loaded: the other one gets the second
    # Both have 1 now: the one idle longest (first) wins the tie.
    assert (await desk.conv("c3")).agent_id == first
    assert (await desk.conv("c4")).agent_id == second


async def test_priority_weight_breaks_load_ties(desk: Desk) -> None:
    await desk.agent("plain", capacity=5)
    await desk.agent("senior", capacity=5, weight=10)
    assert (await desk.conv("c1")).agent_id == "senior"
    assert (await desk.conv("c2")).agent_id == "plain"  # less loaded beats weight


async def test_queue_serves_priority_then_age(desk: Desk) -> None:
    await desk.agent("a", OFFLINE, capacity=10)
    order = [("n1", NORMAL), ("l1", LOW), ("h1", HIGH), ("n2", NORMAL), ("u1", URGENT)]
    for cid, prio in order:
        assert (await desk.conv(cid, priority=prio)).state == "waiting"
    queued = await desk.kit.store.queue_page(desk.tenant, None, 0, 10)
    assert [cid for cid, _, _ in queued[0]] == ["u1", "h1", "n1", "n2", "l1"]
    # Coming online drains in that order (assignment times are monotonic).
    await desk.engine.set_status(desk.tenant, "a", ONLINE)
    assigned = [
        decode(r["body"]).conversation_id
        for r in await desk.kit.pool.fetch(
            "SELECT body FROM outbox WHERE routing_key = 'conversation.assigned' ORDER BY id"
        )
    ]
    assert assigned == ["u1", "h1", "n1", "n2", "l1"]


async def test_drain_skips_conversations_nobody_can_take(desk: Desk) -> None:
    await desk.agent("a", OFFLINE, capacity=1)
    await desk.conv("needs-fr", skills=("fr",), priority=URGENT)
    await desk.conv("any")
    await desk.engine.set_status(desk.tenant, "a", ONLINE)
    assert await desk.owner("any") == "a"
    assert await desk.owner("needs-fr") is None


async def test_going_offline_requeues_excluding_the_previous_agent(desk: Desk) -> None:
    await desk.agent("a", capacity=1)
    assert (await desk.conv("c1")).agent_id == "a"
    await desk.agent("b", OFFLINE, capacity=1)
    status, previous, requeued = await desk.engine.set_status(desk.tenant, "a", OFFLINE)
    assert (status, previous, requeued) == (OFFLINE, ONLINE, ["c1"])
    assert await desk.owner("c1") is None
    # "a" is back first: still excluded from c1; "b" arrives and gets it.
    await desk.engine.set_status(desk.tenant, "a", ONLINE)
    assert await desk.owner("c1") is None
    await desk.engine.set_status(desk.tenant, "b", ONLINE)
    assert await desk.owner("c1") == "b"
    events = [
        decode(r["body"])
        for r in await desk.kit.pool.fetch("SELECT routing_key, body FROM outbox ORDER BY id")
        if r["routing_key"] in ("conversation.queued", "conversation.assigned")
    ]
    kinds = [(e.type, e.conversation_id) for e in events]
    assert kinds == [
        ("conversation.assigned", "c1"),
        ("conversation.queued", "c1"),
        ("conversation.assigned", "c1"),
    ]
    queued = events[1].conversation_queued
    assert isinstance(queued, ConversationQueued)
    assert queued.reason == QueueReason.QUEUE_REASON_AGENT_OFFLINE
    assert queued.previous_agent_id == "a"
    assert events[2].conversation_assigned.previous_agent_id == "a"


async def test_sla_requeue_excludes_the_silent_agent(desk: Desk) -> None:
    await desk.agent("a", capacity=1)
    await desk.agent("b", capacity=1)
    first = (await desk.conv("c1")).agent_id
    other = "b" if first == "a" else "a"
    epoch = await desk.kit.pool.fetchval(
        "SELECT version FROM conversations WHERE conversation_id = 'c1' AND tenant_id = $1",
        desk.tenant,
    )
    assert await desk.engine.requeue(
        desk.tenant, "c1", first, QueueReason.QUEUE_REASON_AGENT_TIMEOUT, epoch
    )
    assert await desk.owner("c1") == other
    # A stale epoch (the SLA pass of another replica) changes nothing.
    assert not await desk.engine.requeue(
        desk.tenant, "c1", other, QueueReason.QUEUE_REASON_AGENT_TIMEOUT, epoch
    )


async def test_resolution_frees_capacity_for_the_queue(desk: Desk) -> None:
    await desk.agent("a", capacity=1)
    await desk.conv("c1")
    assert (await desk.conv("c2")).state == "waiting"
    await desk.engine.conversation_resolved(desk.tenant, "c1")
    assert await desk.owner("c2") == "a"
    # A redelivered "created" of a resolved conversation does not route it again.
    again = await desk.conv("c1")
    assert again.state == "resolved"


async def test_manual_paths_share_the_claim(desk: Desk) -> None:
    await desk.agent("a", capacity=1)
    await desk.agent("b", AWAY, capacity=1)
    await desk.conv("c1")  # -> a
    with pytest.raises(AlreadyExists):
        await desk.engine.assign(desk.tenant, "c1", "b", force=False, actor_id="boss")
    with pytest.raises(FailedPrecondition, match="away"):
        await desk.engine.transfer_to_agent(
            desk.tenant, "c1", "b", force=False, reason="", actor_id="boss"
        )
    moved = await desk.engine.transfer_to_agent(
        desk.tenant, "c1", "b", force=True, reason="vip", actor_id="boss"
    )
    assert moved.agent_id == "b"
    with pytest.raises(NotFound):
        await desk.engine.assign(desk.tenant, "nope", "a", force=False, actor_id="")
    with pytest.raises(NotFound):
        await desk.engine.transfer_to_team(desk.tenant, "c1", "ghosts", reason="", actor_id="")
    released, change = await desk.engine.release(desk.tenant, "c1", requeue=True, actor_id="")
    assert released == "b"
    assert change is not None
    assert change.agent_id == "a"  # requeued and immediately taken by the free agent
