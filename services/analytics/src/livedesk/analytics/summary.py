"""Keeping ``conversation_summary`` current: re-computed for the conversations of each batch.

The materialized views of migration 0004 merge every stored fact of a
conversation into ``conversation_state`` as the INSERT into ``events`` runs.
What the reports need from it (first assignment and first agent message of
each episode, the agent message answering each visitor message, ...) depends
on facts that may arrive in any order, so it cannot be folded in event by
event. Instead, after each batch is stored (and before it is acked) the
ingester re-computes the summaries of the conversations the batch touched,
from their complete merged state: a redelivered, late or out-of-order event
just causes one more, identical or corrected, computation.

Concurrent ingesters (replicas) are safe: each computation is stamped with
the time it read the state (``version``), and the one that read last saw
every batch stored before it, so the highest version is complete.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from livedesk.analytics.store import Store

__all__ = ["SUMMARIZED_TYPES", "refresh_all", "refresh_conversations", "touches_summary"]

SUMMARIZED_TYPES: frozenset[str] = frozenset({"message.created", "csat.submitted"})
"""Event types besides ``conversation.*`` that change a conversation's summary."""

_REFRESH = """
INSERT INTO conversation_summary
SELECT * FROM conversation_summary_source
WHERE (tenant_id, conversation_id) IN (SELECT arrayJoin({keys:Array(Tuple(String, String))}))"""


def touches_summary(event_type: str) -> bool:
    """True when an event of ``event_type`` can change its conversation's summary."""
    return event_type.startswith("conversation.") or event_type in SUMMARIZED_TYPES


async def refresh_conversations(store: Store, keys: Iterable[tuple[str, str]]) -> int:
    """Re-compute the summaries of the ``(tenant_id, conversation_id)`` pairs; how many asked."""
    unique = sorted(set(keys))
    if unique:
        await store.command(_REFRESH, {"keys": unique})
    return len(unique)


async def refresh_all(store: Store) -> None:
    """Re-compute every summary (after loading ``events`` other than through the ingester)."""
    await store.command(
        "INSERT INTO conversation_summary SELECT * FROM conversation_summary_source"
    )
