"""Publishing a routing decision as the assignment service would, for chat-only tests."""

from __future__ import annotations

from typing import Any

from livedesk.contracts.events.v1.conversation_pb2 import ConversationAssigned
from livedesk.platform.bus import EventPublisher, connect, new_event
from livedesk.platform.errors import UnroutableError
from livedesk.platform.testing import wait_until
from livedesk.platform.testing.pytest_plugin import BusNames

__all__ = ["publish_assignment"]


async def publish_assignment(bus: BusNames, conversation: dict[str, Any], agent_id: str) -> None:
    """Publish ``conversation.assigned`` once chat's consumer is bound to receive it."""
    connection = await connect(bus.amqp_url, "test-assigner")
    publisher = await EventPublisher.create(connection, bus.exchange, owns_connection=True)
    event = new_event(
        ConversationAssigned(agent_id=agent_id),
        tenant_id=conversation["tenant_id"],
        conversation_id=conversation["id"],
        producer="assignment",
    )

    async def published() -> bool:
        try:
            await publisher.publish(event)
        except UnroutableError:
            return False  # the pods' consumer is not bound yet
        return True

    try:
        await wait_until(published, timeout=20, interval=0.2, what="chat consuming")
    finally:
        await publisher.close()
