"""JWT issue/verify: every kind of bad token is refused (RFC 8725)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from livedesk.platform.auth import (
    AuthSettings,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    load_issuer,
    load_verifier,
)
from livedesk.platform.errors import ConfigError

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def issuer() -> TokenIssuer:
    return load_issuer(AuthSettings(livedesk_env="test"))


@pytest.fixture
def verifier() -> TokenVerifier:
    return load_verifier(AuthSettings(livedesk_env="test"))


def _token(issuer: TokenIssuer, **kw: object) -> str:
    args: dict[str, object] = {
        "subject": "agent-1",
        "tenant_id": "t-1",
        "role": "agent",
        "token_type": "access",
        "ttl": HOUR,
    }
    args.update(kw)
    return issuer.issue(**args)  # type: ignore[arg-type]


def test_valid_token_round_trips(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    claims = verifier.verify(_token(issuer))
    assert (claims.subject, claims.tenant_id, claims.role) == ("agent-1", "t-1", "agent")
    assert claims.expires_at - claims.issued_at == HOUR


def test_expired_token_is_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    old = dt.datetime.now(dt.UTC) - 2 * HOUR
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(_token(issuer, now=old))


def test_wrong_type_is_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    with pytest.raises(TokenError, match="access"):
        verifier.verify(_token(issuer, token_type="refresh"))


def _forge(payload: dict[str, object], header: dict[str, object]) -> str:
    def b64(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(payload)}."


def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    payload = {
        "iss": "livedesk",
        "aud": "livedesk-api",
        "sub": "x",
        "tid": "t",
        "role": "admin",
        "typ": "access",
        "iat": now,
        "exp": now + 60,
    }
    with pytest.raises(TokenError, match="algorithm"):
        verifier.verify(_forge(payload, {"alg": "none", "kid": "dev"}))


def test_hs256_with_public_key_as_secret_is_refused(verifier: TokenVerifier) -> None:
    token = jwt.encode({"sub": "x"}, "s" * 32, algorithm="HS256", headers={"kid": "dev"})
    with pytest.raises(TokenError, match="algorithm"):
        verifier.verify(token)


def test_wrong_audience_and_issuer_are_refused(verifier: TokenVerifier) -> None:
    key = load_issuer(AuthSettings(livedesk_env="test"))._key
    now = int(dt.datetime.now(dt.UTC).timestamp())
    base = {"sub": "x", "tid": "t", "role": "agent", "typ": "access", "iat": now, "exp": now + 60}
    for claims, reason in (
        ({**base, "iss": "livedesk", "aud": "other"}, "audience"),
        ({**base, "iss": "evil", "aud": "livedesk-api"}, "issuer"),
    ):
        token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "dev"})
        with pytest.raises(TokenError, match=reason):
            verifier.verify(token)


def test_other_key_is_refused(verifier: TokenVerifier) -> None:
    stranger = TokenIssuer(ec.generate_private_key(ec.SECP256R1()), "dev")
    with pytest.raises(TokenError, match="invalid"):
        verifier.verify(_token(stranger))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 5000])
def test_malformed_tokens_are_refused(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(TokenError):
        verifier.verify(token)


def test_prod_requires_keys() -> None:
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEYS"):
        load_verifier(AuthSettings(livedesk_env="prod"))
    with pytest.raises(ConfigError, match="JWT_PRIVATE_KEY"):
        load_issuer(AuthSettings(livedesk_env="prod"))
