"""Consuming events: ack on success, delayed bounded retries, dead-letter for poison.

Outcomes of one delivery:

- decoded and handled            -> ack                      (``ok`` / ``duplicate``)
- handler raised, retries left   -> copy to ``Q.retry.N``, ack (``retry``)
- handler raised, none left      -> copy to ``Q.dlq``, ack    (``dead_letter``)
- body is not a valid envelope   -> copy to ``Q.dlq``, ack    (``dead_letter``)
- process dies before the ack    -> the broker redelivers it to the next consumer

Each copy is publisher-confirmed before the original is acked, so an event
is never lost between queues; at worst it is handled twice, which the
idempotency helper absorbs.

Acks are batched (:mod:`livedesk.platform.bus.acks`): a delivery is acked
only once it is settled as above, but up to ``ack_delay`` later, together
with its neighbours in one ``basic.ack`` frame (at once when half the
prefetch window waits). Not when the consumer goes idle: deliveries arrive a
few at a time, and acking at every idle moment sent a frame per 3 deliveries
instead of per 17 (``services/assignment/bench/amqp_acks.py``). A crash or a
lost channel in that window means redelivery, as for a crash before the ack;
:meth:`EventConsumer.stop` sends what is pending.

Deliveries are taken from aiormq directly (``basic_consume`` on the channel
underneath aio-pika's robust one): aio-pika's ``IncomingMessage`` wrapper and
its extra task per delivery cost ~20 µs of client CPU per event
(``services/assignment/bench/amqp_acks.py``). aio-pika still restores the
channel, its prefetch, the queues and their bindings after a reconnect; the
consumer then subscribes again on the new channel (its reopen callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel as AmqpChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from livedesk.platform.bus.acks import AckBatcher
from livedesk.platform.bus.envelope import Envelope, decode
from livedesk.platform.bus.topology import QueueTopology
from livedesk.platform.errors import DecodeError
from livedesk.platform.logging import get_logger
from livedesk.platform.metrics import BUS_CONSUMED, BUS_HANDLER_SECONDS
from livedesk.platform.tracing import trace_context

__all__ = ["ATTEMPT_HEADER", "DUPLICATE", "EventConsumer", "Handler"]

log = get_logger("livedesk.bus.consumer")

Handler = Callable[[Envelope], Awaitable[object]]
"""Handles one event; raising means "failed, retry". Return DUPLICATE when skipped."""

DUPLICATE: Final = "duplicate"
ATTEMPT_HEADER: Final = "x-livedesk-attempt"
REASON_HEADER: Final = "x-livedesk-dead-reason"
ERROR_HEADER: Final = "x-livedesk-error"


class EventConsumer:
    """Feeds the events bound to one service's quorum queue to a handler.

    Args:
        connection: a robust connection; consumers are restored after reconnects.
        exchange_name: the topic exchange events are published to.
        topology: names and limits of this service's queues.
        event_types: routing keys to bind (``conversation.*`` patterns allowed).
        handler: called once per delivery.
        prefetch: unacked deliveries the broker may push at once.
        concurrency: handlers running at once; 1 keeps the queue's order.
        ack_delay: seconds a settled delivery may wait to be acked with others.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        *,
        exchange_name: str,
        topology: QueueTopology,
        event_types: Sequence[str],
        handler: Handler,
        prefetch: int = 64,
        concurrency: int = 1,
        ack_delay: float = 0.005,
    ) -> None:
        if not event_types:
            raise ValueError("a consumer must bind at least one event type")
        self._connection = connection
        self._exchange_name = exchange_name
        self.topology = topology
        self._event_types = tuple(event_types)
        self._handler = handler
        self._prefetch = prefetch
        self._concurrency = concurrency
        self._channel: AbstractRobustChannel | None = None
        self._consuming: tuple[AmqpChannel, str] | None = None
        self._stopping = False
        self._resuming: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0
        self._counters: dict[tuple[str, str], Any] = {}
        self._handler_seconds = BUS_HANDLER_SECONDS.labels(topology.name)
        self._idle_event = asyncio.Event()
        self._idle_event.set()
        self.acks = AckBatcher(max_delay=ack_delay, flush_at=prefetch // 2)

    async def start(self) -> None:
        """Declare the exchange and queues, bind, and start consuming."""
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.set_qos(prefetch_count=self._prefetch)
        exchange = await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        topo = self.topology
        await channel.declare_queue(
            topo.dead_letter, durable=True, arguments=topo.dead_letter_arguments()
        )
        for attempt in range(len(topo.retry_delays_ms)):
            await channel.declare_queue(
                topo.retry(attempt), durable=True, arguments=topo.retry_arguments(attempt)
            )
        queue = await channel.declare_queue(
            topo.name, durable=True, arguments=topo.main_arguments()
        )
        for event_type in self._event_types:
            await queue.bind(exchange, routing_key=event_type)
        self._channel = channel
        self._workers = [
            asyncio.create_task(self._work(), name=f"consumer:{topo.name}:{i}")
            for i in range(self._concurrency)
        ]
        channel.reopen_callbacks.add(self._on_reopen)
        await self._consume()
        log.info("consumer_started", queue=topo.name, types=list(self._event_types))

    async def _consume(self) -> None:
        """Subscribe on the channel aio-pika has open now."""
        assert self._channel is not None
        amqp = await self._channel.get_underlay_channel()
        if self._on_cancel not in amqp.on_consumer_cancel_callbacks:
            amqp.on_consumer_cancel_callbacks.add(self._on_cancel)
        ok = await amqp.basic_consume(self.topology.name, self._receive)
        assert ok.consumer_tag is not None
        self._consuming = (amqp, ok.consumer_tag)

    def _on_cancel(self, frame: Basic.Cancel) -> None:
        # The broker ended the subscription (e.g. the queue was deleted): subscribe again.
        if self._consuming is not None and frame.consumer_tag == self._consuming[1]:
            log.warning("consumer_cancelled_by_broker", queue=self.topology.name)
            self._consuming = None
            self._on_reopen()

    def _on_reopen(self, *_: object) -> None:
        # The channel was restored (after a reconnect or a channel error) without our
        # subscription: subscribe again, retrying until it works or the consumer stops.
        if not self._stopping and (self._resuming is None or self._resuming.done()):
            self._resuming = asyncio.create_task(self._resume(), name="consumer-resume")

    async def _resume(self) -> None:
        while not self._stopping:
            try:
                await self._consume()
            except Exception as exc:
                log.warning("consumer_resume_failed", queue=self.topology.name, error=repr(exc))
                await asyncio.sleep(1.0)
            else:
                log.info("consumer_resumed", queue=self.topology.name)
                return

    async def _receive(self, message: DeliveredMessage) -> None:
        # aiormq calls this in a new task per delivery, in delivery order; the
        # inbox hands them to the workers in that same order.
        self._inbox.put_nowait(message)

    async def _work(self) -> None:
        while True:
            message = await self._inbox.get()
            self._busy += 1
            self._idle_event.clear()
            try:
                await self._process(message)
            except Exception:
                # Settling failed (the channel broke, or a retry/dead-letter copy
                # was not confirmed). Give the delivery back so it is not stuck
                # unacked; the delivery limit bounds how often this can repeat.
                log.warning("delivery_not_settled", queue=self.topology.name, exc_info=True)
                assert message.delivery_tag is not None
                with contextlib.suppress(Exception):
                    await message.channel.basic_nack(message.delivery_tag, requeue=True)
                self.acks.settled_elsewhere(message)
            else:
                self.acks.ack(message)
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._idle_event.set()
                self._inbox.task_done()

    async def _process(self, message: DeliveredMessage) -> None:
        """Handle, retry or dead-letter ``message``; returning means it may be acked."""
        queue = self.topology.name
        try:
            env = decode(message.body)
        except DecodeError as exc:
            with trace_context(_header(message, "traceparent")):
                log.error("event_undecodable", queue=queue, error=str(exc))
                await self._forward(message, self.topology.dead_letter, "undecodable", str(exc))
            # Not message.type: a label must not take values from an untrusted body.
            self._count("undecodable", "dead_letter")
            return

        with trace_context(env.traceparent, event_id=env.event_id, event_type=env.type):
            start = time.perf_counter()
            try:
                result = await self._handler(env)
            except Exception as exc:
                self._handler_seconds.observe(time.perf_counter() - start)
                await self._failed(message, env, exc)
                return
            self._handler_seconds.observe(time.perf_counter() - start)
            outcome = DUPLICATE if result == DUPLICATE else "ok"
            self._count(env.type, outcome)
            log.debug("event_handled", queue=queue, outcome=outcome)

    async def _failed(self, message: DeliveredMessage, env: Envelope, exc: Exception) -> None:
        queue = self.topology.name
        attempt = _attempt(message)
        error = f"{type(exc).__name__}: {exc}"
        if attempt < len(self.topology.retry_delays_ms):
            log.warning("event_handler_failed", queue=queue, attempt=attempt, error=error)
            await self._forward(message, self.topology.retry(attempt), None, error, attempt + 1)
            self._count(env.type, "retry")
        else:
            log.error("event_dead_lettered", queue=queue, attempts=attempt + 1, error=error)
            await self._forward(message, self.topology.dead_letter, "handler_failed", error)
            self._count(env.type, "dead_letter")

    async def _forward(
        self,
        message: DeliveredMessage,
        queue_name: str,
        reason: str | None,
        error: str,
        attempt: int | None = None,
    ) -> None:
        """Publish a confirmed copy of ``message`` to ``queue_name`` (the caller acks it)."""
        assert self._channel is not None
        props = message.header.properties
        headers: dict[str, Any] = {
            k: v for k, v in (props.headers or {}).items() if not k.startswith("x-death")
        }
        headers[ERROR_HEADER] = error[:1000]
        if reason is not None:
            headers[REASON_HEADER] = reason
        if attempt is not None:
            headers[ATTEMPT_HEADER] = attempt
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type=props.content_type,
            type=props.message_type,
            message_id=props.message_id,
            app_id=props.app_id,
            timestamp=props.timestamp,
        )
        await self._channel.default_exchange.publish(copy, routing_key=queue_name, mandatory=True)

    def _count(self, event_type: str, outcome: str) -> None:
        # Labelled children are cached: labels() costs a lock and a lookup per event.
        counter = self._counters.get((event_type, outcome))
        if counter is None:
            counter = BUS_CONSUMED.labels(self.topology.name, event_type, outcome)
            self._counters[(event_type, outcome)] = counter
        counter.inc()

    @property
    def idle(self) -> bool:
        """True when no delivery is waiting or being handled."""
        return self._busy == 0 and self._inbox.empty()

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop taking deliveries, let in-flight handlers finish, ack them, close the channel.

        Deliveries prefetched but not yet handled are returned to the queue
        by the broker when the channel closes.
        """
        self._stopping = True
        if self._resuming is not None:
            self._resuming.cancel()
        if self._consuming is not None:
            amqp, tag = self._consuming
            with contextlib.suppress(Exception):
                await amqp.basic_cancel(tag)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle_event.wait(), drain_timeout)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self.acks.flush()
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
        log.info("consumer_stopped", queue=self.topology.name)


def _header(message: DeliveredMessage, name: str) -> str | None:
    value = (message.header.properties.headers or {}).get(name)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _attempt(message: DeliveredMessage) -> int:
    value = (message.header.properties.headers or {}).get(ATTEMPT_HEADER, 0)
    return value if isinstance(value, int) and value >= 0 else 0
