"""The archive file format, and the object stores' shared contract.

Every store test runs against the filesystem store and the S3 store (a moto
server in its own process, or a real S3-compatible store: ``S3_TEST_BUCKET``,
see docs/operations.md).
"""

from __future__ import annotations

import asyncio
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
from livedesk.chat.archive_s3 import S3ObjectStore
from livedesk.chat.archive_store import (
    FileObjectStore,
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    S3Options,
    open_object_store,
)
from livedesk.chat.models import Message
from livedesk.chat.settings import ChatSettings
from livedesk.platform.testing import free_port

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


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each backend in turn, empty (sync: an async fixture cannot ask for another)."""
    if request.param == "s3":
        s3: ObjectStore = request.getfixturevalue("s3_store")
        return s3
    return FileObjectStore(tmp_path / "store")


async def test_store_replaces_reads_ranges_and_deletes(store: ObjectStore) -> None:
    key = "t1/2026/11/a.jsonl.gz"
    await store.put(key, b"0123456789")
    await store.put(key, b"abcdefghij")  # replaced whole
    assert await store.get(key) == b"abcdefghij"
    # [start, end) as a slice would give it, like a file read at an offset.
    for start, end in [(2, 5), (2, None), (0, 1), (9, 10), (8, 20), (10, None), (12, 15), (5, 5)]:
        assert await store.get(key, start, end) == b"abcdefghij"[start:end], (start, end)
    for start, end in [(-1, None), (0, -1)]:
        with pytest.raises(ValueError, match="byte range"):
            await store.get(key, start, end)
    await store.put("t1/empty", b"")
    assert await store.get("t1/empty") == b""
    assert await store.get("t1/empty", 0, 10) == b""
    await store.delete(key)
    await store.delete(key)  # idempotent
    for start, end in [(0, None), (2, 5), (3, 3)]:
        with pytest.raises(ObjectMissing):
            await store.get(key, start, end)
    # A key that only prefixes others, or goes through an object, is no object.
    for missing in ["t1", "t1/2026", "t1/empty/x"]:
        with pytest.raises(ObjectMissing):
            await store.get(missing)


async def test_store_lists_by_prefix_over_every_page(store: ObjectStore) -> None:
    keys = [f"t1/2026/{m:02}/{n}.jsonl.gz" for m in (10, 11) for n in ("b", "a", "c")]
    for key in [*keys, "t2/x.manifest.json", "t10/y"]:
        await store.put(key, key.encode())
    assert await store.list_keys("t1/") == sorted(keys)  # 6 keys: 3 pages of 2 on S3
    assert await store.list_keys("t1/2026/11/") == sorted(keys[3:])
    assert await store.list_keys("t1/2026/11/a") == ["t1/2026/11/a.jsonl.gz"]
    assert await store.list_keys("t3/") == []
    assert await store.list_keys("") == sorted([*keys, "t10/y", "t2/x.manifest.json"])
    assert await store.get("t2/x.manifest.json") == b"t2/x.manifest.json"


async def test_store_refuses_unsafe_keys(store: ObjectStore) -> None:
    for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", "", "a/", "a b"]:
        with pytest.raises(ValueError, match="bad object key"):
            await store.put(bad, b"x")
        with pytest.raises(ValueError, match="bad object key"):
            await store.get(bad)
        with pytest.raises(ValueError, match="bad object key"):
            await store.delete(bad)
    assert await store.list_keys("") == []


async def test_readers_see_the_old_or_the_new_object_never_a_mix(store: ObjectStore) -> None:
    old, new = b"o" * 3_000_000, b"n" * 3_100_000
    await store.put("t/big", old)
    writer = asyncio.create_task(store.put("t/big", new))
    reads = await asyncio.gather(*(store.get("t/big") for _ in range(8)))
    await writer
    assert all(r in (old, new) for r in reads)
    assert await store.get("t/big") == new


async def test_file_store_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path)
    await store.put("t1/2026/11/a.jsonl.gz", b"0123456789")
    await store.put("t1/2026/11/a.jsonl.gz", b"abcdefghij")
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["a.jsonl.gz"]


async def test_s3_store_failures_are_os_errors_naming_the_store(
    s3_store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's standard variable: no retries
    unreachable = S3ObjectStore(
        "livedesk-test", "p", S3Options(f"http://127.0.0.1:{free_port()}", "us-east-1")
    )
    no_bucket = S3ObjectStore(f"livedesk-missing-{uuid.uuid4().hex[:12]}", "", s3_store.options)
    for broken in (unreachable, no_bucket):
        try:
            for call in (
                broken.put("k", b"x"),
                broken.get("k"),
                broken.list_keys(""),
            ):
                with pytest.raises(ObjectStoreError, match=broken.bucket) as failure:
                    await call
                assert isinstance(failure.value, OSError)
        finally:
            await broken.aclose()
    # Closed at shutdown: no new client (connection pool) behind its back.
    closing = S3ObjectStore(s3_store.bucket, s3_store.prefix, s3_store.options)
    await closing.put("k", b"x")
    await closing.aclose()
    with pytest.raises(ObjectStoreError, match="closed"):
        await closing.get("k")
    assert await s3_store.get("k") == b"x"


def test_archive_url_is_checked_at_start(tmp_path: Path) -> None:
    assert isinstance(open_object_store(tmp_path.as_uri()), FileObjectStore)
    assert open_object_store("relative/dir").url.endswith("/relative/dir")
    s3 = open_object_store("s3://my-bucket/live/desk/", S3Options("http://minio:9000", "eu-1"))
    assert isinstance(s3, S3ObjectStore)
    assert (s3.url, s3.bucket, s3.prefix) == (
        "s3://my-bucket/live/desk/",
        "my-bucket",
        "live/desk/",
    )
    assert s3.options == S3Options("http://minio:9000", "eu-1")
    assert open_object_store("s3://my-bucket").url == "s3://my-bucket/"
    for bad in [
        "ftp://host/x",
        "file://otherhost/x",
        "https://minio:9000/bucket",
        "s3://b/x",
        "s3://key:secret@bucket/x",
        "s3://bucket:9000/x",
        "s3://bucket/../x",
        "s3://bucket/a//b",
        "s3://bucket/x?versionId=1",
    ]:
        with pytest.raises(ValueError, match="ARCHIVE_URL"):
            open_object_store(bad)
    with pytest.raises(ValidationError, match="ARCHIVE_URL"):
        ChatSettings(archive_url="s3://key:secret@bucket/prefix")
    with pytest.raises(ValidationError, match="archive_s3_endpoint_url"):
        ChatSettings(archive_url="s3://bucket", archive_s3_endpoint_url="minio:9000")
    settings = ChatSettings(
        archive_url="s3://bucket/p",
        archive_s3_endpoint_url="https://r2.example/",
        archive_s3_region="auto",
        archive_s3_addressing_style="virtual",
    )
    store = settings.open_archive_store()
    assert isinstance(store, S3ObjectStore)
    assert store.options == S3Options("https://r2.example/", "auto", "virtual")
