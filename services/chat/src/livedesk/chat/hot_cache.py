"""Hot data: the recent messages of active conversations, cached in Redis.

A cache, never the record: PostgreSQL holds every message; this holds a copy
of the last ``max_messages`` of each conversation written recently, so that
a resume (WebSocket subscribe ``after_seq``) or the first page of history is
answered without a database round trip. Losing Redis loses no data, only
latency.

Layout: one sorted set per conversation (``<prefix>{<conversation_id>}``),
score = seq, member = the message as compact JSON. The append script keeps
the set's seqs **contiguous** (no holes) and at most ``max_messages`` long:
the next seq is appended (oldest trimmed), the one just below the set is
prepended (write-throughs from two pods can arrive out of order), anything
else — a seq beyond a hole left by a failed write-through — starts the set
again at that seq. Each write refreshes the TTL, so inactive conversations
leave the cache by themselves. The conversation id is the keys' hash tag
(``{...}``): on a Redis Cluster a conversation's set and its tombstone share
a slot, as the scripts that use both need.

A read asks for an inclusive seq range and says which seq it knows to exist
(``known``: the conversation's ``last_seq``, the caller's own seq). It is
served only when the set provably holds every message of the range up to
that seq; otherwise ``None`` and the caller reads PostgreSQL. Redis errors
and timeouts are logged once per outage, counted, and also answered with
``None`` (reads) or ignored (writes): the cache never fails a request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from livedesk.chat.models import Message
from livedesk.chat.redis_batch import CommandBatcher
from livedesk.chat.settings import ChatSettings
from livedesk.platform.logging import get_logger
from livedesk.platform.redis import AnyRedis

__all__ = [
    "HOT_CACHE_READS",
    "HOT_CACHE_WRITES",
    "TOMBSTONE_SECONDS",
    "HotCache",
    "HotCacheStats",
    "open_hot_cache",
]

log = get_logger("livedesk.chat.hot_cache")

TOMBSTONE_SECONDS = 60
"""How long an invalidated conversation refuses write-throughs (far above any in flight)."""

HOT_CACHE_READS = Counter(
    "livedesk_chat_hot_cache_reads_total",
    "History reads asked of the hot-message cache, by outcome "
    "(hit, miss, error, bypassed while Redis is failing).",
    ["outcome"],
)
HOT_CACHE_WRITES = Counter(
    "livedesk_chat_hot_cache_writes_total",
    "Write-throughs of committed messages to the hot-message cache, by outcome "
    "(ok, error, bypassed while Redis is failing).",
    ["outcome"],
)

# KEYS[1] = the conversation's set, KEYS[2] its tombstone;
# ARGV = seq, member, max_messages, ttl seconds.
_APPEND = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local seq = tonumber(ARGV[1])
local max = tonumber(ARGV[3])
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local lo, hi
if first[2] then
  lo = tonumber(first[2])
  hi = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  if hi - lo + 1 ~= redis.call('ZCARD', KEYS[1]) then lo = nil end
end
if lo == nil or seq > hi + 1 then
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[1], seq, ARGV[2])
elseif seq == hi + 1 then
  redis.call('ZADD', KEYS[1], seq, ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', seq - max)
elseif seq == lo - 1 and hi - lo + 1 < max then
  redis.call('ZADD', KEYS[1], seq, ARGV[2])
else
  return 0
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS[1] = the conversation's set; ARGV = first, last seq. Returns {lo, hi, members...}
# in one atomic step, so the bounds and the page are of the same set.
_READ = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not first[2] then return {} end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local out = {first[2], last[2]}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])) do
  out[#out + 1] = member
end
return out
"""


@dataclass
class HotCacheStats:
    """What this cache instance did (the Prometheus counters sum over the process)."""

    hits: int = 0
    misses: int = 0
    read_errors: int = 0
    write_errors: int = 0
    writes: int = 0


def _encode(message: Message) -> bytes:
    return orjson.dumps(
        [
            message.seq,
            str(message.id),
            str(message.tenant_id),
            message.sender_kind,
            str(message.sender_id) if message.sender_id else None,
            message.body,
            message.client_msg_id,
            message.created_at.isoformat(),
        ]
    )


def _decode(conversation_id: uuid.UUID, member: bytes, ids: dict[str, uuid.UUID]) -> Message:
    """One cached message; ``ids`` memoizes the ids that repeat within a page.

    A page's tenant and its two or three senders are the same few ids: parsing
    each once instead of per message halves the decode (uuid.UUID() is pure Python).
    """
    seq, mid, tenant, kind, sender, body, client_msg_id, created = orjson.loads(member)
    tenant_id = ids.get(tenant)
    if tenant_id is None:
        tenant_id = ids[tenant] = uuid.UUID(tenant)
    sender_id = None
    if sender:
        sender_id = ids.get(sender)
        if sender_id is None:
            sender_id = ids[sender] = uuid.UUID(sender)
    return Message(
        conversation_id, int(seq), uuid.UUID(mid), tenant_id, kind, sender_id, body,
        client_msg_id, dt.datetime.fromisoformat(created),
    )  # fmt: skip


class HotCache:
    """The recent messages of each active conversation, write-through, never authoritative."""

    def __init__(
        self,
        redis: AnyRedis,
        *,
        max_messages: int = 100,
        ttl: int = 7 * 86400,
        timeout: float = 0.25,
        retry_after: float = 1.0,
        prefix: str = "livedesk:chat:hot:",
    ) -> None:
        """``timeout`` bounds each Redis call; after an error the cache is bypassed
        for ``retry_after`` seconds, so an outage costs one timeout, not one per request."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.redis = redis
        self.max_messages = max_messages
        self.ttl = ttl
        self.timeout = timeout
        self.retry_after = retry_after
        self.prefix = prefix
        self.stats = HotCacheStats()
        self._append = redis.register_script(_APPEND)
        # Write-throughs of concurrent senders share round trips.
        self._writes = CommandBatcher(redis, timeout=timeout)
        self._read = redis.register_script(_READ)
        self._failing_since: float | None = None
        self._bypass_until = 0.0

    def key(self, conversation_id: uuid.UUID) -> str:
        """The Redis key of a conversation's cached messages (hash tag: one cluster slot)."""
        return f"{self.prefix}{{{conversation_id}}}"

    def _tombstone(self, conversation_id: uuid.UUID) -> str:
        return f"{self.key(conversation_id)}:gone"

    async def add(self, message: Message) -> None:
        """Write-through of a committed message (call after the commit, never before)."""
        if self._bypassed():
            HOT_CACHE_WRITES.labels("bypassed").inc()
            return
        cid = message.conversation_id
        try:
            keys = [self.key(cid), self._tombstone(cid)]
            args: list[bytes | int] = [message.seq, _encode(message), self.max_messages, self.ttl]
            async with asyncio.timeout(self.timeout):
                try:
                    await self._writes.execute("EVALSHA", self._append.sha, 2, *keys, *args)
                except NoScriptError:
                    # A fresh or flushed Redis (cluster node): EVAL loads the script
                    # there. Through the batcher, so that the writes refused together
                    # are retried in their order, not racing each other.
                    await self._writes.execute("EVAL", _APPEND, 2, *keys, *args)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            # The next append finds the hole and starts the set again after it.
            self.stats.write_errors += 1
            HOT_CACHE_WRITES.labels("error").inc()
            self._failed("write", exc)
            return
        self.stats.writes += 1
        HOT_CACHE_WRITES.labels("ok").inc()
        self._recovered()

    async def read(
        self, conversation_id: uuid.UUID, first: int, last: int, *, known: int
    ) -> list[Message] | None:
        """Messages ``first``..``last`` (inclusive, oldest first), or None if not provably all.

        Served when the cached run of seqs starts at or before ``first`` and
        reaches ``last`` or ``known`` (a seq the caller knows exists; seqs
        are gap-free, so nothing between the run's end and ``known`` is left
        out). ``first`` must be at least 1.
        """
        if first < 1 or last < first:
            raise ValueError(f"bad seq range {first}..{last}")
        if self._bypassed():
            HOT_CACHE_READS.labels("bypassed").inc()
            return None
        try:
            async with asyncio.timeout(self.timeout):
                reply: list[Any] = await self._read(
                    keys=[self.key(conversation_id)], args=[first, last]
                )
            messages = self._complete(conversation_id, reply, first, last, known)
        except (RedisError, RedisClusterException, OSError, TimeoutError, ValueError) as exc:
            self.stats.read_errors += 1
            HOT_CACHE_READS.labels("error").inc()
            self._failed("read", exc)
            return None
        self._recovered()
        if messages is None:
            self.stats.misses += 1
            HOT_CACHE_READS.labels("miss").inc()
        else:
            self.stats.hits += 1
            HOT_CACHE_READS.labels("hit").inc()
        return messages

    def _complete(
        self, conversation_id: uuid.UUID, reply: list[Any], first: int, last: int, known: int
    ) -> list[Message] | None:
        if not reply:
            return None
        lo, hi = int(reply[0]), int(reply[1])
        if lo > first or hi < min(last, known):
            return None
        ids: dict[str, uuid.UUID] = {}
        messages = [_decode(conversation_id, m, ids) for m in reply[2:]]
        # The script keeps the run contiguous; checked anyway, so that a set
        # edited by anything else can never turn into a reply with a hole.
        if [m.seq for m in messages] != list(range(first, min(last, hi) + 1)):
            log.warning("hot_cache_not_contiguous", conversation_id=str(conversation_id))
            return None
        return messages

    async def invalidate(self, conversation_id: uuid.UUID) -> None:
        """Forget a conversation's cached messages (erasure, deletion, repair).

        Call it after the database change commits. A tombstone keeps
        write-throughs still in flight (messages committed just before) from
        filling the set again for ``TOMBSTONE_SECONDS``. Raises on Redis
        errors (unlike reads and writes): a caller erasing data must know
        whether the copy is gone, and retry if not.
        """
        async with asyncio.timeout(max(self.timeout, 5.0)):
            # Tombstone first: from then on no write-through can fill the set again.
            await self.redis.set(self._tombstone(conversation_id), 1, ex=TOMBSTONE_SECONDS)
            await self.redis.delete(self.key(conversation_id))

    def _bypassed(self) -> bool:
        return time.monotonic() < self._bypass_until

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._bypass_until = time.monotonic() + self.retry_after
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning(
                "hot_cache_unavailable_reading_postgres", operation=operation, error=repr(exc)
            )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.info(
                "hot_cache_recovered", after_seconds=round(time.monotonic() - self._failing_since)
            )
            self._failing_since = None


def open_hot_cache(settings: ChatSettings, shared: AnyRedis) -> HotCache | None:
    """The pod's hot cache: None when ``HOT_CACHE_MESSAGES`` is 0.

    On the pod's Redis (``shared``) unless ``HOT_CACHE_REDIS_URL`` names
    another (a cluster too when ``REDIS_CLUSTER``); that one is not pinged
    at start: the cache is no dependency.
    """
    if settings.hot_cache_messages == 0:
        return None
    redis = shared
    if settings.hot_cache_redis_url and settings.redis_cluster:
        # It reads its slot map (CLUSTER SLOTS) at its first command.
        redis = aioredis.RedisCluster.from_url(
            settings.hot_cache_redis_url,
            socket_connect_timeout=settings.hot_cache_timeout,
            socket_timeout=settings.hot_cache_timeout,
        )
    elif settings.hot_cache_redis_url:
        redis = aioredis.Redis.from_url(
            settings.hot_cache_redis_url,
            socket_connect_timeout=settings.hot_cache_timeout,
            socket_timeout=settings.hot_cache_timeout,
        )
    return HotCache(
        redis,
        max_messages=settings.hot_cache_messages,
        ttl=settings.hot_cache_ttl,
        timeout=settings.hot_cache_timeout,
    )
