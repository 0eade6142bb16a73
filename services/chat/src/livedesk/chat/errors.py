"""Chat's domain errors, mapped to HTTP statuses and WebSocket error codes in one place.

ChatError
├── NotFound        the thing does not exist, or the caller may not know it does
├── Forbidden       the caller is known but may not do this
├── Conflict        the request clashes with the current state (e.g. resolved)
├── Invalid         the input is well-formed but not acceptable
└── RateLimited     too much, too fast
"""

from __future__ import annotations

__all__ = [
    "ChatError",
    "Conflict",
    "Forbidden",
    "Invalid",
    "NotFound",
    "RateLimited",
    "Unavailable",
    "from_database",
]


class ChatError(Exception):
    """Root of chat's domain errors; ``code`` is the stable machine-readable name."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ChatError):
    """Unknown, or outside what the caller may see (we do not reveal which)."""

    status = 404
    code = "not_found"


class Forbidden(ChatError):
    """Known caller, not allowed."""

    status = 403
    code = "forbidden"


class Conflict(ChatError):
    """Clashes with the current state."""

    status = 409
    code = "conflict"


class Invalid(ChatError):
    """Semantically invalid input."""

    status = 422
    code = "validation_error"


class RateLimited(ChatError):
    """Over a rate or size limit."""

    status = 429
    code = "rate_limited"


class Unavailable(ChatError):
    """A dependency did not answer in time; try again."""

    status = 503
    code = "unavailable"


def from_database(exc: Exception) -> ChatError | None:
    """The domain error a database error stands for, if it is one we expect."""
    import asyncpg

    if isinstance(exc, asyncpg.ObjectNotInPrerequisiteStateError):
        # The shard fence (shard_move): the conversation is moving between databases.
        return Unavailable("this conversation is moving to another database; retry shortly")
    return None
