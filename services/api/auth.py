"""Bearer-token check for mutating calls, and the non-secret identity used in audit rows."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from services.api.errors import ApiError
from services.api.state import SETTINGS

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskreaper"'}


def token_identity(token: str) -> str:
    """Stable across restarts, names which token acted, and reveals nothing usable."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
    return f"token:{digest[:8]}"


def authenticate(request: web.Request) -> str:
    """Returns the caller's identity, or raises 401 (no usable token) or 403 (wrong token)."""
    header = request.headers.get("Authorization")
    if header is None:
        raise ApiError(401, "unauthorized", "missing bearer token", headers=_CHALLENGE)
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "Authorization must be 'Bearer <token>'",
                       headers=_CHALLENGE)
    expected = request.app[SETTINGS].api_token
    # Header values arrive as str with surrogate escapes; compare bytes in constant time.
    given = token.encode("utf-8", "surrogateescape")
    if not expected or not hmac.compare_digest(given, expected.encode("utf-8")):
        raise ApiError(403, "forbidden", "invalid bearer token")
    return token_identity(token)
