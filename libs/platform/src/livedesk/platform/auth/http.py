"""Authenticating aiohttp requests with a bearer access token."""

from __future__ import annotations

from aiohttp import web

from livedesk.platform.auth.tokens import Claims, Role, TokenError, TokenVerifier

__all__ = ["VERIFIER_KEY", "require_claims"]

VERIFIER_KEY = web.AppKey("token_verifier", TokenVerifier)


def require_claims(request: web.Request, *roles: Role) -> Claims:
    """The verified claims of the request's ``Authorization: Bearer`` access token.

    Raises:
        web.HTTPUnauthorized: no token, or a token that is not valid (the reason says why).
        web.HTTPForbidden: a valid token whose role is not among ``roles`` (when given).
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise web.HTTPUnauthorized(
            reason="missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    try:
        claims = request.app[VERIFIER_KEY].verify(token.strip())
    except TokenError as exc:
        raise web.HTTPUnauthorized(
            reason=exc.reason,
            headers={"WWW-Authenticate": _challenge(exc.reason)},
        ) from None
    if roles and claims.role not in roles:
        raise web.HTTPForbidden(reason=f"role {claims.role} may not do this")
    return claims


def _challenge(reason: str) -> str:
    return f'Bearer error="invalid_token", error_description="{reason}"'
