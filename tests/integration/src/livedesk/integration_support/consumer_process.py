"""A bus consumer as its own process, for crash tests.

Environment: AMQP_URL, AMQP_EXCHANGE, QUEUE, OUT (a file that gets one line
per event received), MODE = ``hang`` (never finish a handler, so never ack)
or ``ack`` (record and ack). Prints ``consuming`` once the consumer runs.
"""

from __future__ import annotations

import asyncio
import os

from livedesk.platform.bus import Envelope, EventConsumer, QueueTopology, connect
from livedesk.platform.runtime import Shutdown, run_service


async def main(shutdown: Shutdown) -> None:
    """Consume until stopped (or killed)."""
    out_path = os.environ["OUT"]
    hang = os.environ.get("MODE", "ack") == "hang"
    connection = await connect(os.environ["AMQP_URL"], "consumer-process")

    async def handler(env: Envelope) -> None:
        with open(out_path, "a", encoding="utf-8") as out:
            out.write(env.event_id + "\n")
            out.flush()
            os.fsync(out.fileno())
        if hang:
            await asyncio.Event().wait()

    consumer = EventConsumer(
        connection,
        exchange_name=os.environ["AMQP_EXCHANGE"],
        topology=QueueTopology(os.environ["QUEUE"], retry_delays_ms=(100,)),
        event_types=["conversation.created"],
        handler=handler,
        prefetch=1,
    )
    await consumer.start()
    print("consuming", flush=True)
    await shutdown.wait()
    await consumer.stop(drain_timeout=1)
    await connection.close()


if __name__ == "__main__":
    raise SystemExit(run_service(main, "consumer-process"))
