"""JWT issue/verify: every kind of bad token is refused (RFC 8725)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

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
from livedesk.platform.auth.keys import DEV_KEY_ID
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


def _refusal(verifier: TokenVerifier, token: str) -> str | None:
    try:
        verifier.verify(token)
    except TokenError as exc:
        return str(exc)
    return None


def test_a_cached_token_is_refused_once_it_expires(issuer: TokenIssuer) -> None:
    verifier = load_verifier(AuthSettings(livedesk_env="test"))
    # exp 3.5 s ago: still inside the 5 s leeway now, outside it within ~2 s.
    token = _token(issuer, ttl=HOUR, now=dt.datetime.now(dt.UTC) - HOUR - dt.timedelta(seconds=3.5))
    assert verifier.verify(token).subject == "agent-1"
    assert verifier.cached == 1
    assert verifier.verify(token).subject == "agent-1"  # from the cache
    deadline = time.monotonic() + 10
    while (refusal := _refusal(verifier, token)) is None:  # polled, with a deadline
        assert time.monotonic() < deadline, "a cached token outlived its exp"
        time.sleep(0.05)
    assert "expired" in refusal
    assert verifier.cached == 0


def test_a_cached_token_still_has_to_be_of_the_expected_type(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token = _token(issuer)
    verifier.verify(token)
    with pytest.raises(TokenError, match="refresh"):
        verifier.verify(token, expected_type="refresh")


def test_the_cache_is_bounded_and_can_be_off(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    keys = {DEV_KEY_ID: verifier._keys[DEV_KEY_ID]}
    small, off = TokenVerifier(keys, cache_size=2), TokenVerifier(keys, cache_size=0)
    for n in range(3):
        token = _token(issuer, subject=f"agent-{n}")
        assert small.verify(token).subject == off.verify(token).subject == f"agent-{n}"
    assert (small.cached, off.cached) == (2, 0)


def test_a_single_use_token_is_verified_without_being_remembered(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    access = _token(issuer)
    verifier.verify(access)
    ticket = _token(issuer, token_type="ws_ticket")
    assert verifier.verify(ticket, "ws_ticket", remember=False).token_type == "ws_ticket"
    assert verifier.cached == 1  # only the access token
    assert verifier.verify(access).subject == "agent-1"
    with pytest.raises(TokenError, match="invalid"):
        verifier.verify(ticket[:-4] + "AAAA", "ws_ticket", remember=False)


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
