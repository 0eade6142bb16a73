"""Where archived conversations are kept: an object store behind a small interface.

The archiver needs only five operations (put, get with an optional byte
range, delete, list by prefix, and the URL for logs), so any S3-compatible
store fits behind :class:`ObjectStore`. ``ARCHIVE_URL`` picks one through
:func:`open_object_store`: the local filesystem (``file:///path`` or a
path, the default) here, or an S3-compatible store (``s3://bucket/prefix``,
:mod:`livedesk.chat.archive_s3`); see docs/operations.md.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit

__all__ = [
    "FileObjectStore",
    "ObjectMissing",
    "ObjectStore",
    "ObjectStoreError",
    "S3Options",
    "check_key",
    "check_range",
    "is_key",
    "open_object_store",
]

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
# S3's rules (3-63 characters: lower-case letters, digits, dots, hyphens),
# plus the upper case and underscores that old buckets and some stores allow.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


@dataclass(frozen=True)
class S3Options:
    """Where an S3-compatible store is (``ARCHIVE_S3_*``); empty: botocore's chain decides."""

    endpoint_url: str = ""
    region: str = ""
    # "auto": path-style when endpoint_url is set (MinIO & co. rarely have
    # wildcard DNS for bucket.host), botocore's choice otherwise.
    addressing_style: Literal["auto", "path", "virtual"] = "auto"


class ObjectMissing(LookupError):
    """No object has this key."""


class ObjectStoreError(OSError):
    """The store failed to answer (unreachable, access denied, no such bucket, ...).

    An ``OSError``, like the filesystem store's own failures, so callers
    handle a failing disk and a failing S3 endpoint alike.
    """


def check_range(start: int, end: int | None) -> None:
    """ValueError unless ``[start, end)`` could be a byte range (an empty one is fine)."""
    if start < 0 or (end is not None and end < 0):
        raise ValueError(f"bad byte range [{start}, {end})")


def is_key(key: str) -> bool:
    """Whether ``key`` is a safe relative object key."""
    return bool(_KEY.match(key)) and not any(part in (".", "..") for part in key.split("/"))


def check_key(key: str) -> str:
    """``key`` if it is a safe relative object key (ValueError otherwise)."""
    if not is_key(key):
        raise ValueError(f"bad object key {key!r}")
    return key


class ObjectStore(Protocol):
    """The few object-store operations the archive uses (S3 semantics)."""

    url: str

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there, atomically."""

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (all of it by default); ObjectMissing if none."""

    async def delete(self, key: str) -> None:
        """Remove the object; nothing happens if there is none."""

    async def list_keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    async def aclose(self) -> None:
        """Release connections (at shutdown); the store is not used afterwards."""


class FileObjectStore:
    """Objects as files under a root directory; writes are atomic (temp file + rename).

    Blocking file I/O runs in a worker thread so the event loop keeps serving.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        """Write to a temporary file beside the target, fsync, then rename over it."""
        await asyncio.to_thread(self._put, self._path(key), data)

    @staticmethod
    def _put(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{uuid.uuid4().hex}")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename itself must survive a crash before the hot rows are deleted.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes of the file, or of the range ``[start, end)``."""
        check_range(start, end)
        return await asyncio.to_thread(self._get, self._path(key), start, end)

    @staticmethod
    def _get(path: Path, start: int, end: int | None) -> bytes:
        try:
            with path.open("rb") as f:
                f.seek(start)
                return f.read() if end is None else f.read(max(0, end - start))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            # A key that names a "directory" or passes through a file is no
            # object either, as in S3 (where "a" and "a/b" are unrelated keys).
            raise ObjectMissing(str(path)) from None

    async def delete(self, key: str) -> None:
        """Remove the file if it exists."""
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    async def list_keys(self, prefix: str) -> list[str]:
        """Keys (relative paths) under the root that start with ``prefix``."""
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[str]:
        # Walk only the deepest directory the prefix names, not the whole store.
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    async def aclose(self) -> None:
        """Nothing to release: files are opened per call."""


def open_object_store(url: str, s3: S3Options | None = None) -> ObjectStore:
    """The store ``ARCHIVE_URL`` names (ValueError naming the variable if unusable).

    ``file:///abs/path`` or a plain path (relative to the working directory),
    or ``s3://bucket[/prefix]`` with ``s3`` saying where the endpoint is
    (``ARCHIVE_S3_*``). Connects to nothing: an S3 store opens its client on
    first use, so this also serves to validate the setting.
    """
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        if parts.netloc not in ("", "localhost"):
            raise ValueError("ARCHIVE_URL: file URLs name a local path (file:///path)")
        path = unquote(parts.path) if parts.scheme else url
        if not path:
            raise ValueError("ARCHIVE_URL: empty path")
        return FileObjectStore(Path(path).resolve())
    if parts.scheme == "s3":
        return _open_s3(parts.netloc, parts.path, parts.query or parts.fragment, s3)
    if parts.scheme in ("http", "https"):
        raise ValueError(
            "ARCHIVE_URL: an S3-compatible store is s3://bucket/prefix, "
            "with its endpoint in ARCHIVE_S3_ENDPOINT_URL"
        )
    raise ValueError(
        f"ARCHIVE_URL: unsupported scheme {parts.scheme!r} (use file:///path or s3://bucket)"
    )


def _open_s3(bucket: str, path: str, extra: str, options: S3Options | None) -> ObjectStore:
    if "@" in bucket:
        raise ValueError(
            "ARCHIVE_URL: no credentials in the URL (it is logged): use AWS_ACCESS_KEY_ID & co."
        )
    if not _BUCKET.match(bucket):
        # Also refuses bucket:port: the endpoint is ARCHIVE_S3_ENDPOINT_URL.
        raise ValueError(
            f"ARCHIVE_URL: s3://BUCKET/prefix needs a valid bucket name, not {bucket!r}"
        )
    prefix = unquote(path).strip("/")
    if extra or (prefix and not is_key(prefix)):
        raise ValueError("ARCHIVE_URL: the s3:// prefix is a plain path (a-z, 0-9, _.-, /)")
    # Imported here: botocore takes a while to import and most pods use files.
    from livedesk.chat.archive_s3 import S3ObjectStore

    return S3ObjectStore(bucket, prefix, options)
