"""Where signing and verification keys come from: environment, or the dev pair."""

from __future__ import annotations

import json
from importlib import resources
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ec import (
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from livedesk.platform.auth.tokens import TokenIssuer, TokenVerifier
from livedesk.platform.errors import ConfigError

__all__ = ["DEV_KEY_ID", "AuthSettings", "load_issuer", "load_verifier"]

DEV_KEY_ID = "dev"


class AuthSettings(BaseSettings):
    """JWT key material.

    ``JWT_PUBLIC_KEYS``: JSON object ``{"<kid>": "<PEM>"}`` of every key tokens may
    be signed with (old and new during a rotation). ``JWT_PRIVATE_KEY``: PEM of the
    signing key (issuers only), published under ``JWT_KEY_ID``.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    livedesk_env: Literal["dev", "test", "prod"] = "dev"
    jwt_public_keys: str | None = None
    jwt_private_key: SecretStr | None = None
    jwt_key_id: str = DEV_KEY_ID


def _dev_pem(name: str) -> bytes:
    return resources.files("livedesk.platform.auth").joinpath(name).read_bytes()


def load_verifier(settings: AuthSettings) -> TokenVerifier:
    """A verifier for the configured public keys (the dev key outside prod)."""
    if not settings.jwt_public_keys:
        if settings.livedesk_env == "prod":
            raise ConfigError("JWT_PUBLIC_KEYS: required in prod")
        key = load_pem_public_key(_dev_pem("dev_public_key.pem"))
        assert isinstance(key, EllipticCurvePublicKey)
        return TokenVerifier({DEV_KEY_ID: key})
    try:
        raw = json.loads(settings.jwt_public_keys)
        if not isinstance(raw, dict) or not raw:
            raise ValueError("not a non-empty JSON object")
        keys = {}
        for kid, pem in raw.items():
            key = load_pem_public_key(str(pem).encode())
            if not isinstance(key, EllipticCurvePublicKey):
                raise ValueError(f"key {kid!r} is not an EC (P-256) key")
            keys[str(kid)] = key
    except ValueError as exc:
        raise ConfigError(f"JWT_PUBLIC_KEYS: {exc}") from None
    return TokenVerifier(keys)


def load_issuer(settings: AuthSettings) -> TokenIssuer:
    """An issuer signing with the configured private key (the dev key outside prod)."""
    if settings.jwt_private_key is None:
        if settings.livedesk_env == "prod":
            raise ConfigError("JWT_PRIVATE_KEY: required in prod")
        pem = _dev_pem("dev_private_key.pem")
        kid = DEV_KEY_ID
    else:
        pem = settings.jwt_private_key.get_secret_value().encode()
        kid = settings.jwt_key_id
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"JWT_PRIVATE_KEY: {exc}") from None
    if not isinstance(key, EllipticCurvePrivateKey):
        raise ConfigError("JWT_PRIVATE_KEY: not an EC (P-256) key")
    return TokenIssuer(key, kid)
