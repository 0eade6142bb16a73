"""Publishing events with confirms: an event is either confirmed or the caller gets an error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import aio_pika
import aiormq
import pamqp.commands
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from livedesk.platform.bus.envelope import Envelope, encode, validate
from livedesk.platform.errors import PublishError, UnroutableError
from livedesk.platform.metrics import BUS_PUBLISH_SECONDS, BUS_PUBLISHED

__all__ = ["EventPublisher", "to_amqp_message"]


def to_amqp_message(env: Envelope) -> aio_pika.Message:
    """The persistent AMQP message that carries ``env``."""
    return aio_pika.Message(
        encode(env),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/x-protobuf",
        type=env.type,
        message_id=env.event_id,
        app_id=env.producer,
        timestamp=env.occurred_at.ToDatetime(),
        headers={"traceparent": env.traceparent, "tenant_id": env.tenant_id},
    )


class EventPublisher:
    """Publishes envelopes to the topic exchange, routing key = event type.

    Messages are persistent and ``mandatory``: an event no queue is bound to
    comes back from the broker and is reported as a failure, not dropped.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        timeout: float,
        connection: AbstractRobustConnection | None = None,
    ) -> None:
        self._channel = channel
        self._exchange = exchange
        self._timeout = timeout
        self._owned_connection = connection

    @classmethod
    async def create(
        cls,
        connection: AbstractRobustConnection,
        exchange_name: str,
        timeout: float = 10.0,
        *,
        owns_connection: bool = False,
    ) -> EventPublisher:
        """Open a confirming channel and declare the durable topic exchange.

        With ``owns_connection`` the publisher closes ``connection`` in :meth:`close`.
        """
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        return cls(channel, exchange, timeout, connection if owns_connection else None)

    async def publish(self, env: Envelope) -> None:
        """Publish one event and wait for its confirm.

        Raises:
            PublishError: nacked, returned as unroutable, connection lost, or timed out.
        """
        validate(env)
        start = time.perf_counter()
        try:
            await self._exchange.publish(
                to_amqp_message(env), routing_key=env.type, mandatory=True, timeout=self._timeout
            )
        except aiormq.exceptions.DeliveryError as exc:
            BUS_PUBLISHED.labels(env.type, "failed").inc()
            if isinstance(exc.frame, pamqp.commands.Basic.Return):
                raise UnroutableError(
                    f"event {env.event_id} ({env.type}) unroutable: no queue is bound"
                ) from exc
            raise PublishError(f"event {env.event_id} ({env.type}) nacked: {exc!r}") from exc
        except Exception as exc:  # every other failure mode also means "not confirmed"
            BUS_PUBLISHED.labels(env.type, "failed").inc()
            raise PublishError(f"event {env.event_id} ({env.type}) not confirmed: {exc!r}") from exc
        BUS_PUBLISH_SECONDS.observe(time.perf_counter() - start)
        BUS_PUBLISHED.labels(env.type, "ok").inc()

    async def publish_each(self, envs: Sequence[Envelope]) -> list[PublishError | None]:
        """Publish all events with their confirms in flight together; each one's outcome."""
        results = await asyncio.gather(*(self.publish(e) for e in envs), return_exceptions=True)
        outcomes: list[PublishError | None] = []
        for result in results:
            if isinstance(result, PublishError) or result is None:
                outcomes.append(result)
            elif isinstance(result, Exception):
                outcomes.append(PublishError(repr(result)))
            else:
                raise result
        return outcomes

    async def publish_many(self, envs: Sequence[Envelope]) -> None:
        """Publish all events with their confirms in flight together.

        Raises:
            PublishError: at least one was not confirmed (the others may have been).
        """
        results = await asyncio.gather(*(self.publish(e) for e in envs), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            first = failures[0]
            if not isinstance(first, Exception):
                raise first
            raise PublishError(
                f"{len(failures)} of {len(envs)} events not confirmed; first: {first}"
            ) from first

    async def close(self) -> None:
        """Close the channel, and the connection when this publisher owns it."""
        if not self._channel.is_closed:
            await self._channel.close()
        if self._owned_connection is not None and not self._owned_connection.is_closed:
            await self._owned_connection.close()
