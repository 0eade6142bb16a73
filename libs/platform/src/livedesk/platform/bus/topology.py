"""Names and arguments of the exchange and queues, in one place.

For a consuming service's queue ``Q``:

- ``Q``          quorum queue bound to the event types the service wants;
                 a message redelivered more than ``delivery_limit`` times
                 (a consumer crashing on it) is dead-lettered to ``Q.dlq``.
- ``Q.retry.N``  quorum queues holding a failed event for ``delay[N]`` ms,
                 then dead-lettering it back to ``Q`` through the default
                 exchange (so no other service sees the retry).
- ``Q.dlq``      quorum queue of poison events, kept for people to inspect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["QueueTopology", "queue_arguments"]


def queue_arguments(dead_letter_to: str, **extra: Any) -> dict[str, Any]:
    """Arguments of a quorum queue that dead-letters, at least once, to ``dead_letter_to``."""
    args: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_to,
        # at-least-once dead-lettering needs reject-publish overflow.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    args.update(extra)
    return args


@dataclass(frozen=True, slots=True)
class QueueTopology:
    """The queues of one consuming service."""

    name: str
    retry_delays_ms: tuple[int, ...] = (1000, 5000, 30000)
    delivery_limit: int = 20

    @property
    def dead_letter(self) -> str:
        """The dead-letter queue's name."""
        return f"{self.name}.dlq"

    def retry(self, attempt: int) -> str:
        """The retry queue for a message that has failed ``attempt + 1`` times."""
        return f"{self.name}.retry.{attempt}"

    def main_arguments(self) -> dict[str, Any]:
        """Arguments of the main queue."""
        return queue_arguments(self.dead_letter, **{"x-delivery-limit": self.delivery_limit})

    def retry_arguments(self, attempt: int) -> dict[str, Any]:
        """Arguments of retry queue ``attempt``: hold for the delay, then back to the main queue."""
        return queue_arguments(self.name, **{"x-message-ttl": self.retry_delays_ms[attempt]})

    @staticmethod
    def dead_letter_arguments() -> dict[str, Any]:
        """Arguments of the dead-letter queue."""
        return {"x-queue-type": "quorum"}
