"""Full-text search over message bodies, newest first, with stable cursor pagination.

A query is words and ``"quoted phrases"``. A message matches when its body
holds every word and every phrase (case-insensitive, whole words). The
words of the query, phrases included, go to ``hasAllTokens`` on
``lowerUTF8(body)``, which the ``text`` (inverted) index of ``messages``
answers without reading the bodies that cannot match; each phrase is then
checked as a word sequence on the few candidate bodies.

Tokens are maximal runs of ASCII letters and digits and of non-ASCII
characters, exactly as ClickHouse's ``splitByNonAlpha`` tokenizer cuts them,
so the index and the query agree.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import html
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livedesk.analytics.errors import AnalyticsError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from livedesk.analytics.store import Store

__all__ = ["SearchQuery", "SearchQueryError", "highlight", "parse_query", "search_messages"]

_TOKEN = re.compile(r"[0-9a-z\u0080-\U0010ffff]+")
_PHRASE = re.compile(r'"([^"]*)"')
MAX_TERMS = 16


class SearchQueryError(AnalyticsError):
    """The search text or cursor cannot be used (shown to the caller)."""


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A parsed search: single words and phrases (each a tuple of words)."""

    words: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]

    @property
    def tokens(self) -> list[str]:
        """Every distinct word, phrases included, for the index."""
        seen: dict[str, None] = dict.fromkeys(self.words)
        for phrase in self.phrases:
            seen.update(dict.fromkeys(phrase))
        return list(seen)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def parse_query(text: str) -> SearchQuery:
    """Words and ``"phrases"`` of ``text``.

    Raises:
        SearchQueryError: nothing to search for, or too many terms.
    """
    phrases = tuple(t for t in (tuple(_tokens(p)) for p in _PHRASE.findall(text)) if len(t) > 0)
    rest = _PHRASE.sub(" ", text).replace('"', " ")
    words = tuple(dict.fromkeys(_tokens(rest)))
    # A one-word phrase is a word.
    words += tuple(p[0] for p in phrases if len(p) == 1 and p[0] not in words)
    phrases = tuple(p for p in phrases if len(p) > 1)
    query = SearchQuery(words, phrases)
    if not query.tokens:
        raise SearchQueryError("q holds no word to search for")
    if len(query.tokens) > MAX_TERMS:
        raise SearchQueryError(f"q holds more than {MAX_TERMS} words")
    return query


def _phrase_regex(phrase: tuple[str, ...]) -> str:
    # RE2 on lowerUTF8(body): the words in order, separated by non-token characters only.
    sep = r"[^0-9a-z\x{80}-\x{10FFFF}]+"
    edge_l = r"(?:^|[^0-9a-z\x{80}-\x{10FFFF}])"
    edge_r = r"(?:$|[^0-9a-z\x{80}-\x{10FFFF}])"
    return edge_l + sep.join(re.escape(w) for w in phrase) + edge_r


def highlight(body: str, query: SearchQuery) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of ``body`` that the query matched, merged and sorted."""
    lowered = body.lower()
    spans: list[tuple[int, int]] = []
    if len(lowered) == len(body):  # offsets only hold when lowering kept the length
        tokens = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(lowered)]
        wanted = set(query.words)
        spans += [(s, e) for s, e, t in tokens if t in wanted]
        texts = [t for _, _, t in tokens]
        for phrase in query.phrases:
            n = len(phrase)
            for i in range(len(texts) - n + 1):
                if tuple(texts[i : i + n]) == phrase:
                    spans.append((tokens[i][0], tokens[i + n - 1][1]))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _marked(body: str, spans: list[tuple[int, int]]) -> str:
    out: list[str] = []
    last = 0
    for s, e in spans:
        out += [html.escape(body[last:s]), "<mark>", html.escape(body[s:e]), "</mark>"]
        last = e
    out.append(html.escape(body[last:]))
    return "".join(out)


def encode_cursor(created_ms: int, message_id: str) -> str:
    """An opaque cursor: the position after which the next page starts."""
    raw = json.dumps([created_ms, message_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The position of ``cursor``; SearchQueryError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_ms, message_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise SearchQueryError("cursor is malformed") from exc
    if not isinstance(created_ms, int) or not isinstance(message_id, str):
        raise SearchQueryError("cursor is malformed")
    return created_ms, message_id


async def search_messages(
    store: Store,
    *,
    tenant_id: str,
    query: SearchQuery,
    start: dt.datetime | None,
    end: dt.datetime | None,
    inbox_id: str = "",
    agent_id: str = "",
    status: str = "",
    limit: int = 20,
    cursor: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One page of the tenant's messages matching ``query``, newest first.

    ``agent_id`` keeps conversations that agent was ever assigned to; ``status``
    (``queued``, ``assigned``, ``resolved``) the conversations in that state now.
    """
    parameters: dict[str, Any] = {
        "tenant": tenant_id,
        "tokens": query.tokens,
        "limit": limit + 1,
        "inbox": inbox_id,
        "agent": agent_id,
        "status": status,
    }
    where = [
        "tenant_id = {tenant:String}",
        "hasAllTokens(lowerUTF8(body), {tokens:Array(String)})",
    ]
    for i, phrase in enumerate(query.phrases):
        parameters[f"phrase_{i}"] = _phrase_regex(phrase)
        where.append(f"match(lowerUTF8(body), {{phrase_{i}:String}})")
    if start is not None:
        parameters["from_ms"] = int(start.timestamp() * 1000)
        where.append("created_at >= fromUnixTimestamp64Milli({from_ms:Int64}, 'UTC')")
    if end is not None:
        parameters["to_ms"] = int(end.timestamp() * 1000)
        where.append("created_at < fromUnixTimestamp64Milli({to_ms:Int64}, 'UTC')")
    if cursor:
        created_ms, message_id = decode_cursor(cursor)
        parameters["cursor_ms"], parameters["cursor_id"] = created_ms, message_id
        where.append(
            "(created_at, message_id) < "
            "(fromUnixTimestamp64Milli({cursor_ms:Int64}, 'UTC'), {cursor_id:String})"
        )
    if inbox_id or agent_id or status:
        where.append(f"conversation_id IN ({_FILTERED_CONVERSATIONS})")
    sql = f"""
SELECT conversation_id, message_id, toUnixTimestamp64Milli(created_at), seq,
       sender_kind, sender_id, body
FROM messages FINAL
WHERE {" AND ".join(where)}
ORDER BY created_at DESC, message_id DESC
LIMIT {{limit:UInt32}}"""
    rows = await store.query(sql, parameters, settings)
    page = rows[:limit]
    items = []
    for conversation_id, message_id, created_ms, seq, kind, sender, body in page:
        spans = highlight(str(body), query)
        items.append(
            {
                "conversation_id": conversation_id,
                "message_id": message_id,
                "created_at": dt.datetime.fromtimestamp(int(created_ms) / 1000, dt.UTC)
                .isoformat()
                .replace("+00:00", "Z"),
                "seq": int(seq),
                "sender_kind": kind,
                "sender_id": sender,
                "body": body,
                "highlights": [[s, e] for s, e in spans],
                "body_highlighted": _marked(str(body), spans),
            }
        )
    next_cursor = encode_cursor(int(page[-1][2]), str(page[-1][1])) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}


_FILTERED_CONVERSATIONS = """
    SELECT conversation_id FROM (
        SELECT
            conversation_id,
            argMinIf(inbox_id, occurred_at, type = 'conversation.created') AS inbox_id,
            groupUniqArrayIf(agent_id, type = 'conversation.assigned' AND agent_id != '') AS agents,
            argMax(multiIf(
                type = 'conversation.resolved', 'resolved',
                type = 'conversation.assigned'
                    OR (type = 'conversation.transferred' AND agent_id != ''), 'assigned',
                'queued'), (occurred_at, event_id)) AS status
        FROM conversation_events FINAL
        WHERE tenant_id = {tenant:String}
        GROUP BY conversation_id
    )
    WHERE ({inbox:String} = '' OR inbox_id = {inbox:String})
      AND ({agent:String} = '' OR has(agents, {agent:String}))
      AND ({status:String} = '' OR status = {status:String})"""
