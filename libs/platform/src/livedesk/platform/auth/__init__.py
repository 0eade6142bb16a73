"""JWT access tokens shared by every service: chat issues them, everyone verifies.

Tokens are ES256-signed JWTs (RFC 7519, following the RFC 8725 best
practices): one allowed algorithm, ``iss``/``aud``/``exp`` always checked, an
explicit ``typ`` claim so a refresh token or a socket ticket is never accepted
where an access token is expected, and ``kid`` to rotate keys.

Claims::

    iss  "livedesk"            aud  "livedesk-api"
    sub  user or visitor id    tid  tenant id
    role visitor|agent|admin   typ  access|refresh|ws_ticket
    iat, exp, jti

In ``dev`` and ``test`` the keys default to a committed development pair; in
``prod`` missing keys stop the service at start.
"""

from __future__ import annotations

from livedesk.platform.auth.keys import AuthSettings, load_issuer, load_verifier
from livedesk.platform.auth.tokens import (
    ALGORITHM,
    AUDIENCE,
    ISSUER,
    Claims,
    Role,
    TokenError,
    TokenIssuer,
    TokenType,
    TokenVerifier,
)

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "ISSUER",
    "AuthSettings",
    "Claims",
    "Role",
    "TokenError",
    "TokenIssuer",
    "TokenType",
    "TokenVerifier",
    "load_issuer",
    "load_verifier",
]
