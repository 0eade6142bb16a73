"""The archive file format and the filesystem object store (no servers)."""

from __future__ import annotations

import datetime as dt
import gzip
import uuid
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from livedesk.chat.archive_format import (
    ArchiveCorrupt,
    Manifest,
    build_object,
    decode_member,
    decode_object,
    manifest_key,
    object_key,
)
from livedesk.chat.archive_store import FileObjectStore, ObjectMissing, open_object_store
from livedesk.chat.models import Message
from livedesk.chat.settings import ChatSettings

T0 = dt.datetime(2026, 11, 3, 9, 30, 1, 123456, tzinfo=dt.UTC)


def _messages(cid: uuid.UUID, tenant: uuid.UUID, n: int) -> list[Message]:
    return [
        Message(
            cid,
            seq,
            uuid.uuid4(),
            tenant,
            "visitor" if seq % 2 else "agent",
            uuid.uuid4() if seq % 3 else None,
            f'body {seq} ünïcødé \n"quoted"',
            f"c{seq}" if seq % 2 else None,
            T0 + dt.timedelta(seconds=seq),
        )
        for seq in range(1, n + 1)
    ]


def test_object_round_trips_exactly_and_is_plain_jsonl_gz() -> None:
    tenant = uuid.uuid4()
    a, b = uuid.uuid4(), uuid.uuid4()
    content = [
        (a, uuid.uuid4(), 3, _messages(a, tenant, 3)),
        (b, uuid.uuid4(), 5, _messages(b, tenant, 5)),
    ]
    key = object_key(tenant, uuid.uuid4(), T0)
    data, manifest = build_object(key, tenant, content, T0)

    assert key.startswith(f"{tenant}/2026/11/")
    assert key.endswith(".jsonl.gz")
    assert manifest_key(key).endswith(".manifest.json")
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    decoded = decode_object(manifest, data)
    assert decoded[str(a)] == content[0][3]
    assert decoded[str(b)] == content[1][3]
    # One conversation alone, by byte range.
    entry = manifest.entry(b)
    assert decode_member(entry, data[entry.offset : entry.offset + entry.length]) == content[1][3]
    # Any gzip reader sees one JSON-lines stream of all 8 messages.
    lines = gzip.decompress(data).splitlines()
    assert [orjson.loads(x)["seq"] for x in lines] == [1, 2, 3, 1, 2, 3, 4, 5]
    # Reproducible: the same content gives the same bytes.
    assert build_object(key, tenant, content, T0)[0] == data


def test_corruption_is_detected() -> None:
    tenant, cid = uuid.uuid4(), uuid.uuid4()
    data, manifest = build_object(
        "t/k.jsonl.gz", tenant, [(cid, cid, 2, _messages(cid, tenant, 2))], T0
    )
    flipped = bytes([data[0] ^ 1]) + data[1:]
    with pytest.raises(ArchiveCorrupt):
        decode_object(manifest, flipped)
    with pytest.raises(ArchiveCorrupt):
        decode_member(manifest.conversations[0], data[:-1])
    with pytest.raises(ArchiveCorrupt):
        Manifest.from_bytes(b'{"format": "something else"}')
    with pytest.raises(ArchiveCorrupt):
        manifest.entry(uuid.uuid4())


async def test_file_store_puts_atomically_reads_ranges_lists_and_deletes(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path)
    await store.put("t1/2026/11/a.jsonl.gz", b"0123456789")
    await store.put("t1/2026/11/a.jsonl.gz", b"abcdefghij")  # replaced whole
    await store.put("t2/x.manifest.json", b"{}")
    assert await store.get("t1/2026/11/a.jsonl.gz") == b"abcdefghij"
    assert await store.get("t1/2026/11/a.jsonl.gz", 2, 5) == b"cde"
    assert await store.list_keys("t1/") == ["t1/2026/11/a.jsonl.gz"]
    assert await store.list_keys("t3/") == []
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind
    await store.delete("t1/2026/11/a.jsonl.gz")
    await store.delete("t1/2026/11/a.jsonl.gz")  # idempotent
    with pytest.raises(ObjectMissing):
        await store.get("t1/2026/11/a.jsonl.gz")
    for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", ""]:
        with pytest.raises(ValueError, match="bad object key"):
            await store.put(bad, b"x")


def test_archive_url_is_checked_at_start(tmp_path: Path) -> None:
    assert isinstance(open_object_store(tmp_path.as_uri()), FileObjectStore)
    assert open_object_store("relative/dir").url.endswith("/relative/dir")
    for bad in ["s3://bucket/prefix", "ftp://host/x", "file://otherhost/x"]:
        with pytest.raises(ValueError, match="ARCHIVE_URL"):
            open_object_store(bad)
    with pytest.raises(ValidationError, match="ARCHIVE_URL"):
        ChatSettings(archive_url="s3://bucket/prefix")
