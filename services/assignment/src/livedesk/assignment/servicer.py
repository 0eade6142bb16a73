"""The AssignmentService gRPC servicer: validation, the engine, status codes.

Domain errors become status codes in one place (:func:`_rpc`); the call's
deadline bounds the work (DEADLINE_EXCEEDED when it runs out).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import RedisError

from livedesk.assignment.engine import AgentRow, Engine
from livedesk.assignment.errors import AssignmentError, InvalidArgument
from livedesk.assignment.shifts import Shift, ShiftException, validate_schedule
from livedesk.assignment.store import Change
from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.assignment.v1.assignment_service_pb2_grpc import (
    AssignmentServiceServicer,
)
from livedesk.contracts.events.v1.common_pb2 import (
    AgentStatus,
    Priority,
    QueueReason,
    Weekday,
)
from livedesk.contracts.events.v1.common_pb2 import Shift as PbShift
from livedesk.contracts.events.v1.common_pb2 import ShiftException as PbShiftException
from livedesk.platform.logging import get_logger

__all__ = ["AssignmentApi"]

log = get_logger("livedesk.assignment.grpc")

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: Upper bound of one call's work when the client sets no deadline.
DEFAULT_CALL_TIMEOUT = 30.0


def _rpc(
    fn: Callable[[Any, Req, Context], Awaitable[Resp]],
) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
    """Bound by the deadline; AssignmentError -> its status code; dependency down -> UNAVAILABLE."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: Context) -> Resp:
        remaining: float | None = context.time_remaining()
        budget = DEFAULT_CALL_TIMEOUT if remaining is None else max(0.0, remaining)
        try:
            async with asyncio.timeout(budget):
                return await fn(self, request, context)
        except AssignmentError as exc:
            await context.abort(exc.code, str(exc))
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        except (RedisError, OSError) as exc:
            log.warning("rpc_dependency_error", rpc=fn.__name__, error=repr(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"dependency unavailable: {exc}")
        raise AssertionError("unreachable")  # abort raises

    return wrapper


def _required(**fields: str) -> None:
    for name, value in fields.items():
        if not value:
            raise InvalidArgument(f"{name} is required")


def _ts(ms: int) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(ms)
    return t


def _page(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    return 50 if page_size == 0 else min(page_size, 500)


def _token(filters: Sequence[object], offset: str) -> str:
    digest = hashlib.sha256(json.dumps([str(f) for f in filters]).encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(json.dumps([digest, offset]).encode()).decode()


def _untoken(filters: Sequence[object], token: str) -> str | None:
    if not token:
        return None
    try:
        digest, offset = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        raise InvalidArgument("page_token is malformed") from None
    want = hashlib.sha256(json.dumps([str(f) for f in filters]).encode()).hexdigest()[:16]
    if digest != want or not isinstance(offset, str):
        raise InvalidArgument("page_token does not belong to these filters")
    return offset


def _profile_of(request: pb.UpsertAgentProfileRequest) -> AgentRow:
    p = request.profile
    _required(tenant_id=p.tenant_id, agent_id=p.agent_id)
    for name, items in (("skills", p.skills), ("team_ids", p.team_ids)):
        if any(not s or "," in s or "|" in s for s in items):
            raise InvalidArgument(f"{name} must be non-empty and contain no ',' or '|'")
    shifts = tuple(Shift(s.weekday, s.start_minute, s.end_minute) for s in p.shifts)
    try:
        exceptions = tuple(
            ShiftException(dt.date.fromisoformat(e.date), e.day_off, e.start_minute, e.end_minute)
            for e in p.shift_exceptions
        )
        validate_schedule(p.time_zone, shifts, exceptions)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    return AgentRow(
        tenant_id=p.tenant_id,
        agent_id=p.agent_id,
        display_name=p.display_name,
        status=AgentStatus.AGENT_STATUS_OFFLINE,
        capacity=p.capacity,
        skills=tuple(sorted(set(p.skills))),
        team_ids=tuple(sorted(set(p.team_ids))),
        time_zone=p.time_zone,
        shifts=tuple(sorted(shifts, key=lambda s: (s.weekday, s.start))),
        exceptions=tuple(sorted(exceptions, key=lambda e: e.date)),
        priority_weight=p.priority_weight,
        version=0,
    )


def _profile_pb(a: AgentRow) -> pb.AgentProfile:
    return pb.AgentProfile(
        tenant_id=a.tenant_id,
        agent_id=a.agent_id,
        display_name=a.display_name,
        status=AgentStatus.ValueType(a.status),
        capacity=a.capacity,
        skills=a.skills,
        team_ids=a.team_ids,
        time_zone=a.time_zone,
        shifts=[
            PbShift(weekday=Weekday.ValueType(s.weekday), start_minute=s.start, end_minute=s.end)
            for s in a.shifts
        ],
        priority_weight=a.priority_weight,
        shift_exceptions=[
            PbShiftException(
                date=e.date.isoformat(), day_off=e.day_off, start_minute=e.start, end_minute=e.end
            )
            for e in a.exceptions
        ],
    )


def _assignment_pb(c: Change) -> pb.Assignment:
    return pb.Assignment(
        conversation_id=c.conversation_id,
        agent_id=c.agent_id,
        team_id=c.team_id,
        assigned_at=_ts(c.assigned_ms),
    )


def _queued_pb(c: Change) -> pb.QueuedConversation:
    return pb.QueuedConversation(
        conversation_id=c.conversation_id,
        team_id=c.team_id,
        position=c.position,
        priority=Priority.ValueType(c.priority),
        required_skills=c.skills,
        reason=QueueReason.ValueType(c.reason),
        queued_at=_ts(c.queued_ms),
    )


class AssignmentApi(AssignmentServiceServicer):
    """livedesk.assignment.v1.AssignmentService on one replica's engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @_rpc
    async def SetAgentStatus(
        self, request: pb.SetAgentStatusRequest, context: Context
    ) -> pb.SetAgentStatusResponse:
        """See the proto."""
        _required(tenant_id=request.tenant_id, agent_id=request.agent_id)
        if request.status not in (1, 2, 3):
            raise InvalidArgument("status is required")
        status, previous, requeued = await self._engine.set_status(
            request.tenant_id, request.agent_id, request.status
        )
        return pb.SetAgentStatusResponse(
            status=AgentStatus.ValueType(status),
            previous_status=AgentStatus.ValueType(previous),
            requeued_conversation_ids=requeued,
        )

    @_rpc
    async def UpsertAgentProfile(
        self, request: pb.UpsertAgentProfileRequest, context: Context
    ) -> pb.UpsertAgentProfileResponse:
        """See the proto."""
        stored, created = await self._engine.upsert_agent(_profile_of(request))
        return pb.UpsertAgentProfileResponse(profile=_profile_pb(stored), created=created)

    @_rpc
    async def GetAgentProfile(
        self, request: pb.GetAgentProfileRequest, context: Context
    ) -> pb.GetAgentProfileResponse:
        """See the proto."""
        _required(tenant_id=request.tenant_id, agent_id=request.agent_id)
        agent = await self._engine.get_agent(request.tenant_id, request.agent_id)
        return pb.GetAgentProfileResponse(profile=_profile_pb(agent))

    @_rpc
    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        """See the proto."""
        _required(tenant_id=request.tenant_id)
        size = _page(request.page_size)
        filters = ("agents", request.tenant_id, request.team_id, request.status)
        after = _untoken(filters, request.page_token) or ""
        rows = await self._engine.pool.fetch(
            """SELECT a.*, (SELECT max(assigned_at) FROM assignments s
                            WHERE s.tenant_id = a.tenant_id AND s.agent_id = a.agent_id) AS last
               FROM agents a
               WHERE tenant_id = $1 AND agent_id > $2
                 AND ($3 = '' OR $3 = ANY(team_ids)) AND ($4 = 0 OR status = $4)
               ORDER BY agent_id LIMIT $5""",
            request.tenant_id,
            after,
            request.team_id,
            request.status,
            size + 1,
        )
        more = len(rows) > size
        rows = rows[:size]
        loads = await self._engine.store.agent_loads(
            request.tenant_id, [r["agent_id"] for r in rows]
        )
        agents = []
        for r in rows:
            a = AgentRow.of(r)
            state = pb.AgentState(
                profile=_profile_pb(a),
                active_conversations=loads[a.agent_id],
                on_shift=a.on_shift(),
            )
            if r["last"] is not None:
                state.last_assigned_at.FromDatetime(r["last"])
            agents.append(state)
        return pb.ListAgentsResponse(
            agents=agents,
            next_page_token=_token(filters, rows[-1]["agent_id"]) if more else "",
        )

    @_rpc
    async def ListQueue(
        self, request: pb.ListQueueRequest, context: Context
    ) -> pb.ListQueueResponse:
        """See the proto."""
        _required(tenant_id=request.tenant_id)
        size = _page(request.page_size)
        filters = ("queue", request.tenant_id, request.team_id)
        offset_text = _untoken(filters, request.page_token) or "0"
        if not offset_text.isdigit():
            raise InvalidArgument("page_token is malformed")
        offset = int(offset_text)
        team = request.team_id or None
        rows, total = await self._engine.store.queue_page(request.tenant_id, team, offset, size)
        fields = await self._engine.store.conversation_fields(
            request.tenant_id, [cid for cid, _, _ in rows]
        )
        out = []
        for (cid, pos, team_id), f in zip(rows, fields, strict=True):
            if not f:
                continue
            out.append(
                pb.QueuedConversation(
                    conversation_id=cid,
                    team_id=team_id,
                    position=pos,
                    priority=Priority.ValueType(int(f.get("pr", "2"))),
                    required_skills=[s for s in f.get("sk", "").split(",") if s],
                    reason=QueueReason.ValueType(int(f.get("rs", "1"))),
                    queued_at=_ts(int(float(f.get("qms", "0")))),
                )
            )
        end = offset + len(rows)
        return pb.ListQueueResponse(
            conversations=out,
            next_page_token=_token(filters, str(end)) if end < total else "",
            total_size=total,
        )

    @_rpc
    async def AssignConversation(
        self, request: pb.AssignConversationRequest, context: Context
    ) -> pb.AssignConversationResponse:
        """See the proto."""
        _required(
            tenant_id=request.tenant_id,
            conversation_id=request.conversation_id,
            agent_id=request.agent_id,
        )
        change = await self._engine.assign(
            request.tenant_id,
            request.conversation_id,
            request.agent_id,
            force=request.force,
            actor_id=request.actor_id,
        )
        return pb.AssignConversationResponse(assignment=_assignment_pb(change))

    @_rpc
    async def TransferConversation(
        self, request: pb.TransferConversationRequest, context: Context
    ) -> pb.TransferConversationResponse:
        """See the proto."""
        _required(tenant_id=request.tenant_id, conversation_id=request.conversation_id)
        target = request.WhichOneof("target")
        if target == "agent_id" and request.agent_id:
            change = await self._engine.transfer_to_agent(
                request.tenant_id,
                request.conversation_id,
                request.agent_id,
                force=request.force,
                reason=request.reason,
                actor_id=request.actor_id,
            )
        elif target == "team_id" and request.team_id:
            change = await self._engine.transfer_to_team(
                request.tenant_id,
                request.conversation_id,
                request.team_id,
                reason=request.reason,
                actor_id=request.actor_id,
            )
        else:
            raise InvalidArgument("a target agent_id or team_id is required")
        if change.state == "assigned":
            return pb.TransferConversationResponse(assignment=_assignment_pb(change))
        return pb.TransferConversationResponse(queued_conversation=_queued_pb(change))

    @_rpc
    async def ReleaseConversation(
        self, request: pb.ReleaseConversationRequest, context: Context
    ) -> pb.ReleaseConversationResponse:
        """See the proto."""
        _required(tenant_id=request.tenant_id, conversation_id=request.conversation_id)
        released, change = await self._engine.release(
            request.tenant_id,
            request.conversation_id,
            requeue=request.requeue,
            actor_id=request.actor_id,
        )
        reply = pb.ReleaseConversationResponse(released_agent_id=released)
        if request.requeue and change is not None and change.state == "waiting":
            reply.queued_conversation.CopyFrom(_queued_pb(change))
        return reply

    @_rpc
    async def ReportConsolePresence(
        self, request: pb.ReportConsolePresenceRequest, context: Context
    ) -> pb.ReportConsolePresenceResponse:
        """See the proto."""
        _required(tenant_id=request.tenant_id, reporter_id=request.reporter_id)
        if any(not a for a in request.agent_ids):
            raise InvalidArgument("agent_ids must not contain an empty id")
        restored = await self._engine.report_presence(request.tenant_id, request.agent_ids)
        return pb.ReportConsolePresenceResponse(restored_agent_ids=restored)
