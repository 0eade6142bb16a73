"""Where archived conversations are kept: an object store behind a small interface.

The archiver needs only five operations (put, get with an optional byte
range, delete, list by prefix, and the URL for logs), so any S3-compatible
store fits behind :class:`ObjectStore`. The local filesystem
(``ARCHIVE_URL=file:///path``) is the default and the one implemented and
tested here; an S3 implementation plugs in through :func:`open_object_store`
(see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

__all__ = ["FileObjectStore", "ObjectMissing", "ObjectStore", "check_key", "open_object_store"]

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class ObjectMissing(LookupError):
    """No object has this key."""


def check_key(key: str) -> str:
    """``key`` if it is a safe relative object key (ValueError otherwise)."""
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
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
        return await asyncio.to_thread(self._get, self._path(key), start, end)

    @staticmethod
    def _get(path: Path, start: int, end: int | None) -> bytes:
        try:
            with path.open("rb") as f:
                f.seek(start)
                return f.read() if end is None else f.read(max(0, end - start))
        except FileNotFoundError:
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


def open_object_store(url: str) -> ObjectStore:
    """The store ``ARCHIVE_URL`` names (ValueError naming the variable if unusable).

    ``file:///abs/path`` or a plain path (relative to the working directory).
    """
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        if parts.netloc not in ("", "localhost"):
            raise ValueError("ARCHIVE_URL: file URLs name a local path (file:///path)")
        path = unquote(parts.path) if parts.scheme else url
        if not path:
            raise ValueError("ARCHIVE_URL: empty path")
        return FileObjectStore(Path(path).resolve())
    if parts.scheme in ("s3", "http", "https"):
        raise ValueError(
            "ARCHIVE_URL: S3-compatible stores plug in behind livedesk.chat.archive_store."
            "ObjectStore, but no S3 client ships in this version; use file:///path"
        )
    raise ValueError(f"ARCHIVE_URL: unsupported scheme {parts.scheme!r} (use file:///path)")
