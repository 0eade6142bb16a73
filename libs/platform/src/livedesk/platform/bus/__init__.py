"""The LiveDesk event bus on RabbitMQ (aio-pika).

- One durable topic exchange; routing key = event type; body = protobuf Envelope.
- :class:`EventPublisher`: persistent, mandatory, publisher-confirmed; raises
  :class:`~livedesk.platform.errors.PublishError` for anything not confirmed.
- :class:`EventConsumer`: a durable quorum queue per consuming service, manual
  ack after the handler (batched: ``bus.acks``), bounded prefetch, delayed
  bounded retries, and a dead-letter queue for poison events.
- ``bus.idempotency.PgIdempotency`` makes a handler run once per ``event_id``.
- ``bus.outbox.Outbox`` / ``OutboxRelay``: events written in the same PostgreSQL
  transaction as the state they describe, then published with confirms.

The last two need the ``postgres`` extra, so they are imported from their
modules, not from here: a service without PostgreSQL can use the bus.
"""

from __future__ import annotations

from livedesk.platform.bus.connection import connect, connection_check
from livedesk.platform.bus.consumer import DUPLICATE, EventConsumer, Handler
from livedesk.platform.bus.envelope import (
    Envelope,
    decode,
    encode,
    event_type_of,
    new_event,
    payload_of,
)
from livedesk.platform.bus.publisher import EventPublisher
from livedesk.platform.bus.topology import QueueTopology

__all__ = [
    "DUPLICATE",
    "Envelope",
    "EventConsumer",
    "EventPublisher",
    "Handler",
    "QueueTopology",
    "connect",
    "connection_check",
    "decode",
    "encode",
    "event_type_of",
    "new_event",
    "payload_of",
]
