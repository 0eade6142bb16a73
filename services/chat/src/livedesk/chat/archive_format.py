"""The archive's file format: compressed JSON lines plus a manifest (pure, no I/O).

An archive object (``<tenant_id>/<yyyy>/<mm>/<batch id>.jsonl.gz``) holds the
messages of several conversations of one tenant: one JSON object per line,
oldest first per conversation, each conversation compressed as its own gzip
member. Concatenated gzip members are one valid gzip stream, so the object
is an ordinary ``.jsonl.gz`` any tool reads, and one conversation can still
be read alone with a byte-range request (offset and length in the manifest).

Beside it, ``<same name>.manifest.json`` says what is inside: the object's
SHA-256 and size, and per conversation its visitor, message count, last seq,
byte range and the member's SHA-256. Objects are immutable: removing a
conversation from one (erasure, retention) writes a new object under a new
key, so a manifest read once is valid for as long as its object exists.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import orjson

from livedesk.chat.models import Message

__all__ = [
    "FORMAT",
    "ArchiveCorrupt",
    "Entry",
    "Manifest",
    "build_object",
    "decode_member",
    "decode_object",
    "is_manifest",
    "manifest_key",
    "object_key",
    "object_of_manifest",
]

FORMAT = "livedesk.chat.archive/v1"
_SUFFIX = ".jsonl.gz"
_MANIFEST_SUFFIX = ".manifest.json"


class ArchiveCorrupt(ValueError):
    """An archive object or manifest does not match what it claims to hold."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One conversation inside an archive object."""

    conversation_id: str
    visitor_id: str
    messages: int
    last_seq: int
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an archive object holds, written beside it."""

    format: str
    key: str
    tenant_id: str
    created_at: str
    size: int
    sha256: str
    messages: int
    conversations: tuple[Entry, ...]

    def entry(self, conversation_id: uuid.UUID) -> Entry:
        """The entry of ``conversation_id``; ArchiveCorrupt if the object lacks it."""
        wanted = str(conversation_id)
        for e in self.conversations:
            if e.conversation_id == wanted:
                return e
        raise ArchiveCorrupt(f"{self.key} does not hold conversation {wanted}")

    def to_bytes(self) -> bytes:
        """The manifest as JSON."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a manifest (ArchiveCorrupt if it is not one of this format)."""
        try:
            raw = orjson.loads(data)
            if raw.get("format") != FORMAT:
                raise ArchiveCorrupt(f"unknown archive format {raw.get('format')!r}")
            entries = tuple(Entry(**e) for e in raw.pop("conversations"))
            return cls(**raw, conversations=entries)
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise ArchiveCorrupt(f"not an archive manifest: {exc}") from None


def object_key(tenant_id: uuid.UUID, batch_id: uuid.UUID, when: dt.datetime) -> str:
    """Where a new archive object goes: by tenant, then month, then batch."""
    return f"{tenant_id}/{when:%Y}/{when:%m}/{batch_id}{_SUFFIX}"


def manifest_key(key: str) -> str:
    """The manifest's key beside the object ``key``."""
    return key.removesuffix(_SUFFIX) + _MANIFEST_SUFFIX


def is_manifest(key: str) -> bool:
    """Whether ``key`` names a manifest."""
    return key.endswith(_MANIFEST_SUFFIX)


def object_of_manifest(key: str) -> str:
    """The object key a manifest ``key`` describes."""
    return key.removesuffix(_MANIFEST_SUFFIX) + _SUFFIX


def _line(m: Message) -> bytes:
    return orjson.dumps(
        {
            "conversation_id": str(m.conversation_id),
            "seq": m.seq,
            "id": str(m.id),
            "tenant_id": str(m.tenant_id),
            "sender_kind": m.sender_kind,
            "sender_id": str(m.sender_id) if m.sender_id else None,
            "body": m.body,
            "client_msg_id": m.client_msg_id,
            "created_at": m.created_at.isoformat(),
        }
    )


def _message(line: bytes) -> Message:
    r = orjson.loads(line)
    return Message(
        uuid.UUID(r["conversation_id"]), int(r["seq"]), uuid.UUID(r["id"]),
        uuid.UUID(r["tenant_id"]), r["sender_kind"],
        uuid.UUID(r["sender_id"]) if r["sender_id"] else None, r["body"], r["client_msg_id"],
        dt.datetime.fromisoformat(r["created_at"]),
    )  # fmt: skip


def build_object(
    key: str,
    tenant_id: uuid.UUID,
    conversations: Sequence[tuple[uuid.UUID, uuid.UUID, int, Sequence[Message]]],
    created_at: dt.datetime,
) -> tuple[bytes, Manifest]:
    """The object bytes and manifest for ``(conversation_id, visitor_id, last_seq, messages)``."""
    parts: list[bytes] = []
    entries: list[Entry] = []
    offset = 0
    for conversation_id, visitor_id, last_seq, messages in conversations:
        text = b"".join(_line(m) + b"\n" for m in messages)
        # mtime=0: the same messages always give the same bytes (reproducible checksums).
        member = gzip.compress(text, compresslevel=6, mtime=0)
        parts.append(member)
        entries.append(
            Entry(
                str(conversation_id), str(visitor_id), len(messages), last_seq, offset,
                len(member), hashlib.sha256(member).hexdigest(),
            )
        )  # fmt: skip
        offset += len(member)
    data = b"".join(parts)
    manifest = Manifest(
        FORMAT, key, str(tenant_id), created_at.isoformat(), len(data),
        hashlib.sha256(data).hexdigest(), sum(e.messages for e in entries), tuple(entries),
    )  # fmt: skip
    return data, manifest


def decode_member(entry: Entry, member: bytes) -> list[Message]:
    """The messages of one conversation from its member's bytes, checked against ``entry``."""
    if len(member) != entry.length or hashlib.sha256(member).hexdigest() != entry.sha256:
        raise ArchiveCorrupt(f"conversation {entry.conversation_id}: checksum mismatch")
    try:
        messages = [_message(line) for line in gzip.decompress(member).splitlines() if line]
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveCorrupt(f"conversation {entry.conversation_id}: {exc}") from None
    if len(messages) != entry.messages or any(
        str(m.conversation_id) != entry.conversation_id for m in messages
    ):
        raise ArchiveCorrupt(f"conversation {entry.conversation_id}: wrong messages")
    return messages


def decode_object(manifest: Manifest, data: bytes) -> dict[str, list[Message]]:
    """Every conversation's messages in a whole object, checked against its manifest."""
    if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise ArchiveCorrupt(f"{manifest.key}: object checksum mismatch")
    return {
        e.conversation_id: decode_member(e, data[e.offset : e.offset + e.length])
        for e in manifest.conversations
    }
