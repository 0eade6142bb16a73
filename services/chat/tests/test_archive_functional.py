"""Cold data on real PostgreSQL, Redis and the filesystem: archive, erasure, retention.

One test runs the same path on the S3 store (moto's server in its own process,
or a real store with ``S3_TEST_BUCKET``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from livedesk.chat.api_conversations import ACTIONS_KEY
from livedesk.chat.api_retention import ERASER_KEY
from livedesk.chat.archive import Archiver, ArchiveReader
from livedesk.chat.archive_format import ArchiveCorrupt, Manifest, is_manifest, manifest_key
from livedesk.chat.archive_s3 import S3ObjectStore
from livedesk.chat.archive_store import FileObjectStore, ObjectMissing, ObjectStore, S3Options
from livedesk.chat.hot_cache import HotCache
from livedesk.chat.service import OPENAPI_TEXT
from livedesk.chat.testing import Chat
from livedesk.platform.bus import decode, payload_of
from livedesk.platform.redis import connect_redis
from livedesk.platform.testing import free_port
from livedesk.platform.testing.openapi import OpenApi

SPEC = OpenApi(OPENAPI_TEXT)
MONTH = dt.timedelta(days=30)


def _store(chat: Chat) -> FileObjectStore:
    store = chat.client.app[ERASER_KEY].archive
    assert isinstance(store, FileObjectStore)
    return store


def _archiver(chat: Chat, store: ObjectStore | None = None) -> Archiver:
    return Archiver(chat.store.shards, store or _store(chat), after=MONTH, batch_size=50)


async def _call(chat: Chat, method: str, path: str, spec_path: str, **kw: Any) -> tuple[int, Any]:
    resp = await chat.client.request(method, path, **kw)
    body = await resp.json()
    SPEC.check(method.lower(), spec_path, resp.status, body)
    return resp.status, body


async def _talk(chat: Chat, messages: int = 4) -> tuple[dict[str, Any], dict[str, Any]]:
    """A visitor's conversation with ``messages`` messages (both sides), resolved."""
    visitor = await chat.visitor()
    conversation = await chat.conversation(visitor["access_token"], subject="order 42")
    path = f"/api/v1/conversations/{conversation['id']}/messages"
    for i in range(messages):
        token = visitor["access_token"] if i % 2 == 0 else chat.token()
        resp = await chat.client.post(
            path,
            json={"body": f"message {i} ✓", "client_msg_id": f"c{i}"},
            headers=chat.auth(token),
        )
        assert resp.status == 201, await resp.text()
    resp = await chat.client.post(
        f"/api/v1/conversations/{conversation['id']}/resolve", headers=chat.auth(chat.token())
    )
    assert resp.status == 200
    return visitor, conversation


async def _age(chat: Chat, conversation: dict[str, Any], days: int) -> None:
    """Pretend the conversation was resolved ``days`` ago."""
    cid = uuid.UUID(conversation["id"])
    await chat.store.shards.primary(cid).execute(
        "UPDATE conversations SET resolved_at = now() - make_interval(days => $2) WHERE id = $1",
        cid,
        days,
    )


async def _history(chat: Chat, conversation: dict[str, Any], query: str = "") -> dict[str, Any]:
    status, body = await _call(
        chat,
        "GET",
        f"/api/v1/conversations/{conversation['id']}/messages{query}",
        "/api/v1/conversations/{conversation_id}/messages",
        headers=chat.auth(chat.token()),
    )
    assert status == 200
    return body  # type: ignore[no-any-return]


def _shard(chat: Chat, conversation: dict[str, Any]) -> asyncpg.Pool:
    return chat.store.shards.primary(uuid.UUID(conversation["id"]))


async def _rows(chat: Chat, conversation: dict[str, Any], table: str) -> int:
    column = "id" if table == "conversations" else "conversation_id"
    count: int = await _shard(chat, conversation).fetchval(
        f"SELECT count(*) FROM {table} WHERE {column} = $1", uuid.UUID(conversation["id"])
    )
    return count


async def _events(pool: asyncpg.Pool, kind: str) -> list[Any]:
    rows = await pool.fetch("SELECT body FROM outbox WHERE routing_key = $1 ORDER BY id", kind)
    return [decode(r["body"]) for r in rows]


async def _manifests(store: ObjectStore, tenant_id: uuid.UUID) -> list[Manifest]:
    keys = [k for k in await store.list_keys(f"{tenant_id}/") if is_manifest(k)]
    return [Manifest.from_bytes(await store.get(k)) for k in keys]


async def test_old_conversations_move_to_the_archive_and_read_back_identically(chat: Chat) -> None:
    _, old = await _talk(chat, messages=7)
    _, recent = await _talk(chat, messages=2)
    await _age(chat, old, 31)
    before = await _history(chat, old, "?limit=500")
    pages_before = [
        await _history(chat, old, "?limit=3&before_seq=5"),
        await _history(chat, old, "?limit=2&after_seq=4"),
    ]
    assert [m["seq"] for m in before["items"]] == [1, 2, 3, 4, 5, 6, 7]

    report = await _archiver(chat).run_once()

    assert (report.conversations, report.messages, report.objects) == (1, 7, 1)
    assert await _rows(chat, old, "messages") == 0  # gone from PostgreSQL ...
    assert await _rows(chat, recent, "messages") == 2  # ... only what was due
    assert await _rows(chat, old, "conversations") == 1  # the row stays, as the pointer
    # ... and read back identically, whole and by pages.
    assert await _history(chat, old, "?limit=500") == before
    assert [
        await _history(chat, old, "?limit=3&before_seq=5"),
        await _history(chat, old, "?limit=2&after_seq=4"),
    ] == pages_before
    _status, shown = await _call(
        chat,
        "GET",
        f"/api/v1/conversations/{old['id']}",
        "/api/v1/conversations/{conversation_id}",
        headers=chat.auth(chat.token()),
    )
    assert shown["status"] == "resolved"
    assert shown["archived_at"] is not None
    # The object is an ordinary .jsonl.gz with its manifest beside it.
    (manifest,) = await _manifests(_store(chat), chat.org.tenant.id)
    data = (_store(chat).root / manifest.key).read_bytes()
    assert len(gzip.decompress(data).splitlines()) == 7
    assert [e.conversation_id for e in manifest.conversations] == [old["id"]]
    # One conversation.archived event, committed with the deletion.
    (event,) = await _events(_shard(chat, old), "conversation.archived")
    assert event.conversation_id == old["id"]
    assert (payload_of(event).archive_key, payload_of(event).message_count) == (manifest.key, 7)  # type: ignore[attr-defined]
    # An archived conversation is never reopened or written to.
    resp = await chat.client.post(
        f"/api/v1/conversations/{old['id']}/reopen", headers=chat.auth(chat.token())
    )
    assert resp.status == 409
    # Nothing more is due: a second run archives nothing.
    assert (await _archiver(chat).run_once()).conversations == 0


async def test_an_unreachable_archive_is_a_retryable_503_not_a_500(
    chat: Chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, old = await _talk(chat, messages=3)
    await _age(chat, old, 31)
    await _archiver(chat).run_once()
    actions = chat.client.app[ACTIONS_KEY]
    working = actions.archive
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's standard variable: no retries
    # A real S3 client aimed at a port nobody listens on: the store is down.
    down = S3ObjectStore("livedesk-down", "", S3Options(f"http://127.0.0.1:{free_port()}", "x"))
    actions.archive = ArchiveReader(down)
    try:
        status, body = await _call(
            chat,
            "GET",
            f"/api/v1/conversations/{old['id']}/messages",
            "/api/v1/conversations/{conversation_id}/messages",
            headers=chat.auth(chat.token()),
        )
        assert (status, body["error"]["code"]) == (503, "unavailable")
    finally:
        actions.archive = working
        await down.aclose()
    assert [m["seq"] for m in (await _history(chat, old))["items"]] == [1, 2, 3]


async def test_websocket_subscribe_replays_an_archived_conversation(chat: Chat) -> None:
    visitor, old = await _talk(chat, messages=3)
    await _age(chat, old, 45)
    await _archiver(chat).run_once()
    ws = await chat.ws(visitor["access_token"])
    await ws.send_json(
        {"type": "subscribe", "id": "s1", "conversation_id": old["id"], "after_seq": 1}
    )
    replay = await ws.receive_json(timeout=5)
    assert [m["seq"] for m in replay["messages"]] == [2, 3]
    assert [m["body"] for m in replay["messages"]] == ["message 1 ✓", "message 2 ✓"]
    resp = await chat.client.post(
        f"/api/v1/conversations/{old['id']}/messages",
        json={"body": "hello again"},
        headers=chat.auth(visitor["access_token"]),
    )
    assert resp.status == 409


@pytest.mark.parametrize("chat_archive", ["s3"], indirect=True)
async def test_s3_archive_reads_back_and_erasure_rewrites_the_object(
    chat: Chat, chat_archive: ObjectStore
) -> None:
    assert chat_archive.url.startswith("s3://")
    assert chat.client.app[ERASER_KEY].archive is chat_archive  # the app reads S3 too
    visitor, erased = await _talk(chat, messages=3)
    _, neighbour = await _talk(chat, messages=2)  # archived in the same object
    for conversation in (erased, neighbour):
        await _age(chat, conversation, 40)
    before = {c["id"]: await _history(chat, c) for c in (erased, neighbour)}

    report = await _archiver(chat, chat_archive).run_once()

    assert (report.conversations, report.messages, report.objects) == (2, 5, 1)
    assert await _rows(chat, erased, "messages") == 0
    (manifest,) = await _manifests(chat_archive, chat.org.tenant.id)
    assert len(gzip.decompress(await chat_archive.get(manifest.key)).splitlines()) == 5
    # Read back from S3 (a ranged GET per conversation), identical to before.
    for conversation in (erased, neighbour):
        assert await _history(chat, conversation) == before[conversation["id"]]
    page = await _history(chat, erased, "?limit=1&after_seq=1")
    assert [m["seq"] for m in page["items"]] == [2]

    status, erasure = await _call(
        chat,
        "POST",
        f"/api/v1/visitors/{visitor['visitor']['id']}/erasure",
        "/api/v1/visitors/{visitor_id}/erasure",
        headers=chat.auth(chat.token()),
    )

    assert (status, erasure["status"], erasure["messages"]) == (200, "done", 3)
    (rewritten,) = await _manifests(chat_archive, chat.org.tenant.id)
    assert rewritten.key != manifest.key
    assert [e.conversation_id for e in rewritten.conversations] == [neighbour["id"]]
    for old_key in (manifest.key, manifest_key(manifest.key)):
        with pytest.raises(ObjectMissing):
            await chat_archive.get(old_key)
    text = gzip.decompress(await chat_archive.get(rewritten.key))
    assert len(text.splitlines()) == 2
    assert visitor["visitor"]["id"].encode() not in text
    assert await _history(chat, neighbour) == before[neighbour["id"]]


class CorruptingStore(FileObjectStore):
    """The filesystem store with a disk that returns a flipped bit on read (fault injection)."""

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        data = await super().get(key, start, end)
        return data if key.endswith(".json") else bytes([data[0] ^ 1]) + data[1:]


async def test_nothing_is_deleted_when_the_archive_does_not_verify(
    chat: Chat, tmp_path: Path
) -> None:
    _, old = await _talk(chat, messages=3)
    await _age(chat, old, 31)
    store = CorruptingStore(tmp_path / "bad-disk")

    with pytest.raises(ArchiveCorrupt):
        await _archiver(chat, store).run_once()

    assert await _rows(chat, old, "messages") == 3
    assert (await _history(chat, old))["items"][-1]["seq"] == 3
    assert not await _events(_shard(chat, old), "conversation.archived")
    assert await store.list_keys("") == []  # the unverified copy was removed


async def test_erasure_removes_the_visitor_from_postgresql_redis_and_the_archive(
    chat: Chat,
) -> None:
    redis = await connect_redis(chat.settings.redis_url)
    hot = HotCache(redis, prefix=f"test:{uuid.uuid4()}:")
    chat.store.hot = hot  # the pod's hot-message cache, on this test's own keys
    try:
        visitor, archived = await _talk(chat, messages=3)
        other_visitor, neighbour = await _talk(chat, messages=2)  # archived in the same object
        await _age(chat, archived, 40)
        await _age(chat, neighbour, 40)
        await _archiver(chat).run_once()
        open_conversation = await chat.conversation(visitor["access_token"])
        resp = await chat.client.post(
            f"/api/v1/conversations/{open_conversation['id']}/messages",
            json={"body": "my phone is 555-0100"},
            headers=chat.auth(visitor["access_token"]),
        )
        assert resp.status == 201
        cached = hot.key(uuid.UUID(open_conversation["id"]))
        assert await redis.exists(cached)
        neighbour_history = await _history(chat, neighbour)
        visitor_id = visitor["visitor"]["id"]
        path = f"/api/v1/visitors/{visitor_id}/erasure"
        spec_path = "/api/v1/visitors/{visitor_id}/erasure"

        status, _ = await _call(
            chat, "POST", path, spec_path, headers=chat.auth(chat.token(chat.org.agent))
        )
        assert status == 403
        status, _ = await _call(
            chat, "POST", path, spec_path, headers=chat.auth(chat.token(chat.stranger.admin))
        )
        assert status == 404
        status, erasure = await _call(
            chat, "POST", path, spec_path, headers=chat.auth(chat.token())
        )

        assert status == 200, erasure
        assert (erasure["status"], erasure["conversations"], erasure["messages"]) == ("done", 2, 4)
        # PostgreSQL: conversations, messages, index, the visitor and its tokens.
        for conversation in (archived, open_conversation):
            for table in ("conversations", "messages", "read_state"):
                assert await _rows(chat, conversation, table) == 0
        assert not await chat.pool.fetchval(
            "SELECT count(*) FROM conversation_index WHERE visitor_id = $1", uuid.UUID(visitor_id)
        )
        assert not await chat.pool.fetchval(
            "SELECT count(*) FROM visitors WHERE id = $1", uuid.UUID(visitor_id)
        )
        assert not await chat.pool.fetchval(
            "SELECT count(*) FROM refresh_tokens WHERE subject_id = $1", uuid.UUID(visitor_id)
        )
        # Redis.
        assert not await redis.exists(cached)
        # The archive: the object was rewritten without the visitor, the neighbour kept.
        manifests = await _manifests(_store(chat), chat.org.tenant.id)
        assert [[e.conversation_id for e in m.conversations] for m in manifests] == [
            [neighbour["id"]]
        ]
        text = b"".join(gzip.decompress(p.read_bytes()) for p in _store(chat).root.rglob("*.gz"))
        assert b"message 0" in text
        assert visitor_id.encode() not in text
        assert await _history(chat, neighbour) == neighbour_history
        # The event, once, from the directory's outbox.
        (event,) = await _events(chat.pool, "visitor.erased")
        payload = payload_of(event)
        assert payload.visitor_id == visitor_id  # type: ignore[attr-defined]
        assert sorted(payload.conversation_ids) == sorted([archived["id"], open_conversation["id"]])  # type: ignore[attr-defined]
        assert payload.requested_by == str(chat.org.admin.id)  # type: ignore[attr-defined]
        # Idempotent: the same request back, no second event.
        status, again = await _call(chat, "POST", path, spec_path, headers=chat.auth(chat.token()))
        assert (status, again["id"]) == (200, erasure["id"])
        status, shown = await _call(chat, "GET", path, spec_path, headers=chat.auth(chat.token()))
        assert (status, shown["status"]) == (200, "done")
        assert len(await _events(chat.pool, "visitor.erased")) == 1
        assert other_visitor["visitor"]["id"] != visitor_id
        unknown = f"/api/v1/visitors/{uuid.uuid4()}/erasure"
        status, _ = await _call(chat, "POST", unknown, spec_path, headers=chat.auth(chat.token()))
        assert status == 404
    finally:
        await redis.aclose()


async def test_retention_deletes_expired_conversations_everywhere(chat: Chat) -> None:
    path = "/api/v1/retention"
    status, policy = await _call(chat, "GET", path, path, headers=chat.auth(chat.token()))
    assert (status, policy["retention_days"]) == (200, None)
    status, _ = await _call(
        chat, "PUT", path, path, json={"retention_days": 0}, headers=chat.auth(chat.token())
    )
    assert status == 422
    status, _ = await _call(
        chat,
        "PUT",
        path,
        path,
        json={"retention_days": 9},
        headers=chat.auth(chat.token(chat.org.agent)),
    )
    assert status == 403
    status, policy = await _call(
        chat, "PUT", path, path, json={"retention_days": 90}, headers=chat.auth(chat.token())
    )
    assert (status, policy["retention_days"]) == (200, 90)

    _, expired_archived = await _talk(chat, messages=2)
    _, expired_hot = await _talk(chat, messages=1)
    _, kept = await _talk(chat, messages=2)
    await _age(chat, expired_archived, 100)
    await _archiver(chat).run_once()
    await _age(chat, expired_hot, 91)
    await _age(chat, kept, 60)
    eraser = chat.client.app[ERASER_KEY]

    report = await eraser.purge_expired()

    assert (report.conversations, report.messages) == (2, 3)
    for conversation in (expired_archived, expired_hot):
        assert await _rows(chat, conversation, "conversations") == 0
        assert not await chat.pool.fetchval(
            "SELECT count(*) FROM conversation_index WHERE id = $1", uuid.UUID(conversation["id"])
        )
    assert await _manifests(_store(chat), chat.org.tenant.id) == []
    assert await _rows(chat, kept, "messages") == 2
    purged = [
        e
        for c in (expired_archived, expired_hot)
        for e in await _events(_shard(chat, c), "conversation.purged")
        if e.conversation_id == c["id"]
    ]
    assert [payload_of(e).retention_days for e in purged] == [90, 90]  # type: ignore[attr-defined]
    # The other tenant has no policy: nothing of it is touched.
    assert (await eraser.retention_days(chat.stranger.tenant.id)) is None


async def test_archive_command_runs_a_pass_and_reports_it(chat: Chat) -> None:
    _, old = await _talk(chat, messages=2)
    await _age(chat, old, 31)
    env = {
        **os.environ,
        "LIVEDESK_ENV": "test",
        "DATABASE_URL": chat.settings.database_url,
        "ARCHIVE_URL": _store(chat).url,
        "ARCHIVE_AFTER_DAYS": "30",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("CHAT_SHARDS", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livedesk.chat", "archive",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)

    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["archived"]["conversations"] == 1
    assert report["archived"]["messages"] == 2
    assert await _rows(chat, old, "messages") == 0
    assert len((await _history(chat, old))["items"]) == 2
