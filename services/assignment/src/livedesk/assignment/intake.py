"""Events from the bus into the engine.

- ``conversation.created``: routed at once. Idempotent in the routing script
  itself: a redelivery finds the conversation and only re-records its current
  state (which publishes nothing when PostgreSQL already has it).
- ``conversation.resolved`` / ``reopened`` / ``transferred`` (by agents in
  chat): applied once per ``event_id``, checked against ``processed_events``
  before and recorded after the change (the changes themselves are
  state-checked, so a crash in between repeats a harmless no-op).
- ``message.created`` from an agent: the first reply, which stops the SLA clock.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from livedesk.assignment.engine import Engine
from livedesk.assignment.errors import AssignmentError
from livedesk.assignment.recorder import PRODUCER
from livedesk.contracts.events.v1.common_pb2 import ActorKind
from livedesk.contracts.events.v1.conversation_pb2 import (
    ConversationCreated,
    ConversationTransferred,
)
from livedesk.contracts.events.v1.message_pb2 import MessageCreated
from livedesk.platform.bus import DUPLICATE, Envelope, payload_of
from livedesk.platform.logging import get_logger

__all__ = ["CONSUMER", "INTAKE_EVENT_TYPES", "Intake"]

log = get_logger("livedesk.assignment.intake")

CONSUMER = "assignment"
INTAKE_EVENT_TYPES = (
    "conversation.created",
    "conversation.resolved",
    "conversation.reopened",
    "conversation.transferred",
    "message.created",
)


class Intake:
    """The bus handler of the assignment queue."""

    def __init__(self, engine: Engine, pool: asyncpg.Pool) -> None:
        self._engine = engine
        self._pool = pool

    async def handle(self, env: Envelope) -> object:
        """Apply one event (raising means: retry it later)."""
        if env.type == "conversation.created":
            created = payload_of(env)
            assert isinstance(created, ConversationCreated)
            await self._engine.conversation_created(
                env.tenant_id,
                env.conversation_id,
                team_id=created.team_id,
                skills=[s for s in created.required_skills if s and "," not in s],
                priority=created.priority,
                created=env.occurred_at.ToDatetime(tzinfo=dt.UTC),
                inbox_id=created.inbox_id,
            )
            return None
        if env.type == "message.created":
            message = payload_of(env)
            assert isinstance(message, MessageCreated)
            if message.sender_kind == ActorKind.ACTOR_KIND_AGENT and message.sender_id:
                await self._engine.first_reply(
                    env.tenant_id,
                    env.conversation_id,
                    message.sender_id,
                    message.created_at.ToDatetime(tzinfo=dt.UTC)
                    if message.HasField("created_at")
                    else env.occurred_at.ToDatetime(tzinfo=dt.UTC),
                )
            return None
        if env.producer == PRODUCER:
            return None  # our own transfers: already applied
        if await self._pool.fetchval(
            "SELECT true FROM processed_events WHERE consumer = $1 AND event_id = $2",
            CONSUMER,
            env.event_id,
        ):
            return DUPLICATE
        await self._apply_lifecycle(env)
        await self._pool.execute(
            "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING",
            CONSUMER,
            env.event_id,
        )
        return None

    async def _apply_lifecycle(self, env: Envelope) -> None:
        tenant, cid = env.tenant_id, env.conversation_id
        if env.type == "conversation.resolved":
            await self._engine.conversation_resolved(tenant, cid)
        elif env.type == "conversation.reopened":
            await self._engine.conversation_reopened(tenant, cid)
        elif env.type == "conversation.transferred":
            moved = payload_of(env)
            assert isinstance(moved, ConversationTransferred)
            if moved.to_agent_id:
                try:
                    await self._engine.transfer_to_agent(
                        tenant,
                        cid,
                        moved.to_agent_id,
                        force=False,
                        reason=moved.reason,
                        actor_id=moved.actor_id,
                        publish_transfer=False,
                    )
                    return
                except AssignmentError as exc:
                    log.info("transfer_target_refused", conversation_id=cid, error=str(exc))
            try:
                await self._engine.transfer_to_team(
                    tenant,
                    cid,
                    moved.to_team_id,
                    reason=moved.reason,
                    actor_id=moved.actor_id,
                    publish_transfer=False,
                )
            except AssignmentError as exc:
                log.info("transfer_ignored", conversation_id=cid, error=str(exc))
