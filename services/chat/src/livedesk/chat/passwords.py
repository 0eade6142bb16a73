"""Password hashing with Argon2id (RFC 9106 parameters via argon2-cffi's defaults)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["hash_password", "verify_password"]

_hasher = PasswordHasher()
# A hash to verify against when the user does not exist, so timing does not tell.
_DUMMY = _hasher.hash("not-a-real-password")


async def hash_password(password: str) -> str:
    """Argon2id hash; computed off the event loop (it takes tens of milliseconds)."""
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; constant work whether or not the user exists."""

    def check() -> bool:
        try:
            _hasher.verify(password_hash or _DUMMY, password)
        except (VerificationError, InvalidHashError):
            return False
        return password_hash is not None

    return await asyncio.to_thread(check)
