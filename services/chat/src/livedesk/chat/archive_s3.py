"""The archive in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, R2, ...).

Same contract as :class:`~livedesk.chat.archive_store.FileObjectStore`:
a PUT is atomic for readers (S3 shows the whole new object or the old one,
never part of it), ``get`` reads a byte range with a ``Range`` header,
a missing key is :class:`ObjectMissing`, ``delete`` of a missing key is a
no-op, ``list_keys`` pages through ``ListObjectsV2``. Any other failure of
the store (unreachable, access denied, no such bucket) is
:class:`ObjectStoreError`, an ``OSError`` like a failing disk's.

Credentials, and the endpoint and region when the ``ARCHIVE_S3_*`` settings
leave them empty, come from botocore's usual chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and
``~/.aws``, web identity / IRSA, instance metadata; ``AWS_ENDPOINT_URL_S3``,
``AWS_REGION``): no secret passes through LiveDesk's own settings.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from livedesk.chat.archive_store import (
    ObjectMissing,
    ObjectStoreError,
    S3Options,
    check_key,
    check_range,
    is_key,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ["S3ObjectStore"]

# A chat pod reads archived history for many sockets at once; botocore's
# default of 10 pooled connections would queue them.
_MAX_CONNECTIONS = 32
# botocore waits 60 s by default: too long for a history read a user waits on.
_CONNECT_TIMEOUT = 5.0
_READ_TIMEOUT = 30.0
# Error codes meaning "no such object" (HEAD answers a bare status code).
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class S3ObjectStore:
    """Objects under ``prefix`` in ``bucket``; one client (connection pool) per store.

    The client is created on first use, on the running event loop, and
    closed by :meth:`aclose` (the pod's and the archive job's shutdown).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        options: S3Options | None = None,
        *,
        list_page_size: int = 1000,
    ) -> None:
        self.bucket = bucket
        self.prefix = f"{check_key(prefix.strip('/'))}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.options = options or S3Options()
        self.list_page_size = list_page_size
        self._client: S3Client | None = None
        self._exit = AsyncExitStack()
        self._lock = asyncio.Lock()
        self._closed = False

    async def _s3(self) -> S3Client:
        if self._client is None:
            async with self._lock:
                if self._closed:
                    raise ObjectStoreError(f"{self.url}: the store is closed")
                if self._client is None:
                    self._client = await self._exit.enter_async_context(self._create_client())
        return self._client

    def _create_client(self) -> AbstractAsyncContextManager[S3Client]:
        opts = self.options
        style = opts.addressing_style
        if style == "auto" and opts.endpoint_url:
            style = "path"
        config = AioConfig(
            connect_timeout=_CONNECT_TIMEOUT,
            read_timeout=_READ_TIMEOUT,
            max_pool_connections=_MAX_CONNECTIONS,
            s3={"addressing_style": style},
        )
        return get_session().create_client(
            "s3",
            endpoint_url=opts.endpoint_url or None,
            region_name=opts.region or None,
            config=config,
        )

    async def aclose(self) -> None:
        """Close the client and its connections (the store is unusable afterwards)."""
        async with self._lock:
            self._closed = True
            self._client = None
            await self._exit.aclose()

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _failed(self, action: str, key: str, exc: Exception) -> ObjectStoreError:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            detail = f"{error.get('Code', '?')}: {error.get('Message', '')}"
        else:
            detail = str(exc) or type(exc).__name__
        return ObjectStoreError(f"{self.url}: {action} {key!r} failed ({detail})")

    async def put(self, key: str, data: bytes) -> None:
        """One PUT: readers see the old object or the whole new one, never a part."""
        name = self._name(key)
        # Content-MD5 makes the store reject a body damaged on the way (BadDigest);
        # every S3-compatible store checks it, unlike the newer CRC checksums.
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        try:
            s3 = await self._s3()
            await s3.put_object(Bucket=self.bucket, Key=name, Body=data, ContentMD5=md5)
        except (BotoCoreError, ClientError, aiohttp.ClientError) as exc:
            raise self._failed("put", key, exc) from exc

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes of the object, or of the range ``[start, end)`` (one ranged GET)."""
        name = self._name(key)
        check_range(start, end)
        try:
            s3 = await self._s3()
            if end is not None and end <= start:
                # An empty range is no valid Range header; still ObjectMissing if absent.
                await s3.head_object(Bucket=self.bucket, Key=name)
                return b""
            if start == 0 and end is None:
                response = await s3.get_object(Bucket=self.bucket, Key=name)
            else:
                response = await s3.get_object(
                    Bucket=self.bucket, Key=name, Range=_range(start, end)
                )
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _MISSING:
                raise ObjectMissing(key) from None
            if code == "InvalidRange":
                return b""  # starts at or past the end: as reading a file there
            raise self._failed("get", key, exc) from exc
        except (BotoCoreError, aiohttp.ClientError) as exc:
            raise self._failed("get", key, exc) from exc

    async def delete(self, key: str) -> None:
        """DELETE (S3 answers 204 for a missing key too)."""
        name = self._name(key)
        try:
            s3 = await self._s3()
            await s3.delete_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError, aiohttp.ClientError) as exc:
            raise self._failed("delete", key, exc) from exc

    async def list_keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted, over every ListObjectsV2 page."""
        keys: list[str] = []
        try:
            s3 = await self._s3()
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            async for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"].removeprefix(self.prefix)
                    # Keys written by other tools that are no valid archive key
                    # (folder markers "x/", "a//b") are not ours: skipped, as the
                    # filesystem store skips its temporary dot-files.
                    if is_key(key):
                        keys.append(key)
        except (BotoCoreError, ClientError, aiohttp.ClientError) as exc:
            raise self._failed("list", prefix, exc) from exc
        return sorted(keys)


def _range(start: int, end: int | None) -> str:
    """The HTTP Range for ``[start, end)`` (the header's last byte is inclusive)."""
    return f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
