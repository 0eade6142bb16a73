"""Issuing and verifying LiveDesk JWTs."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import (
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)

from livedesk.platform.errors import PlatformError
from livedesk.platform.ids import uuid7_str

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "ISSUER",
    "Claims",
    "Role",
    "TokenError",
    "TokenIssuer",
    "TokenType",
    "TokenVerifier",
]

ALGORITHM = "ES256"
ISSUER = "livedesk"
AUDIENCE = "livedesk-api"

Role = Literal["visitor", "agent", "admin"]
TokenType = Literal["access", "refresh", "ws_ticket"]
_ROLES: frozenset[str] = frozenset(get_args(Role))
_TYPES: frozenset[str] = frozenset(get_args(TokenType))


class TokenError(PlatformError):
    """A token that must be refused; ``reason`` is safe to show to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says."""

    subject: str
    tenant_id: str
    role: Role
    token_type: TokenType
    token_id: str
    issued_at: dt.datetime
    expires_at: dt.datetime


class TokenIssuer:
    """Signs tokens with the current private key."""

    def __init__(self, private_key: EllipticCurvePrivateKey, key_id: str) -> None:
        self._key = private_key
        self._kid = key_id

    def issue(
        self,
        *,
        subject: str,
        tenant_id: str,
        role: Role,
        token_type: TokenType,
        ttl: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> str:
        """A signed token valid for ``ttl``."""
        issued = now or dt.datetime.now(dt.UTC)
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "tid": tenant_id,
            "role": role,
            "typ": token_type,
            "iat": int(issued.timestamp()),
            "exp": int((issued + ttl).timestamp()),
            "jti": uuid7_str(),
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})


class TokenVerifier:
    """Verifies tokens against the published public keys (by ``kid``)."""

    def __init__(
        self,
        public_keys: Mapping[str, EllipticCurvePublicKey],
        leeway: float = 5,
        *,
        cache_size: int = 4096,
    ) -> None:
        """``cache_size`` verified tokens are remembered (0: none), see :meth:`verify`."""
        if not public_keys:
            raise ValueError("at least one public key is needed")
        if cache_size < 0:
            raise ValueError("cache_size must not be negative")
        self._keys = dict(public_keys)
        self._leeway = leeway
        self._cache_size = cache_size
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    def verify(
        self, token: str, expected_type: TokenType = "access", *, remember: bool = True
    ) -> Claims:
        """The claims of a valid token of ``expected_type``; TokenError otherwise.

        A token verified before is answered from a small LRU keyed by the exact
        token text, until its own ``exp`` (plus leeway): the signature cannot
        change, and an ES256 check costs ~1 ms of CPU per request. The type and
        expiry are checked on every call, so a cached token is refused exactly
        when a fresh verification would refuse it.

        ``remember=False`` keeps a freshly verified token out of that cache: a
        single-use token (a WebSocket ticket) is never presented twice, and
        caching it would only push out the reusable access tokens and hold
        ~700 bytes per ticket.
        """
        if not token or len(token) > 4096:
            raise TokenError("malformed token")
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signed(token)
            if remember and self._cache_size:
                self._verified[token] = claims
                if len(self._verified) > self._cache_size:
                    self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
            now = dt.datetime.now(dt.UTC)
            if now > claims.expires_at + dt.timedelta(seconds=self._leeway):
                del self._verified[token]
                raise TokenError("token expired")
        if claims.token_type != expected_type:
            raise TokenError(f"expected an {expected_type} token")
        return claims

    @property
    def cached(self) -> int:
        """How many verified tokens are remembered now."""
        return len(self._verified)

    def _verify_signed(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise TokenError("algorithm not allowed")
        key = self._keys.get(str(header.get("kid", "")))
        if key is None:
            raise TokenError("unknown signing key")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("wrong issuer") from None
        except jwt.PyJWTError:
            raise TokenError("invalid token") from None
        role, typ = payload.get("role"), payload.get("typ")
        tenant, sub = payload.get("tid"), payload.get("sub")
        if role not in _ROLES or typ not in _TYPES:
            raise TokenError("invalid token")
        if not isinstance(tenant, str) or not tenant or not isinstance(sub, str) or not sub:
            raise TokenError("invalid token")
        return Claims(
            subject=sub,
            tenant_id=tenant,
            role=role,
            token_type=typ,
            token_id=str(payload.get("jti", "")),
            issued_at=dt.datetime.fromtimestamp(payload["iat"], dt.UTC),
            expires_at=dt.datetime.fromtimestamp(payload["exp"], dt.UTC),
        )
