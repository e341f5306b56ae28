"""The token endpoints (admin): list the live tokens, make one (its secret is in that answer
and nowhere else, ever), revoke one by name. The operations are shared.tokens'."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.api.auth import authenticate
from services.api.errors import ApiError
from services.api.inputs import Body, json_object
from services.api.serialize import iso
from services.api.state import DB, KEYS, REDIS
from shared.db import Record
from shared.tokens import (
    NAME_RE,
    InvalidTokenRequest,
    Role,
    TokenError,
    TokenExists,
    TokenNotFound,
    Tokens,
)

ROLES = [r.value for r in Role]


def token_json(row: Record) -> dict[str, Any]:
    return {"name": row["name"], "role": row["role"], "created_at": iso(row["created_at"]),
            "created_by": row["created_by"]}


def _tokens(request: web.Request) -> Tokens:
    app = request.app
    return Tokens(app[DB], app[REDIS], app[KEYS])


def _refusal(exc: TokenError) -> ApiError:
    match exc:
        case TokenExists():
            return ApiError(409, "conflict", str(exc))
        case TokenNotFound():
            return ApiError(404, "not_found", str(exc))
        case InvalidTokenRequest():
            return ApiError(400, "invalid_body", str(exc))
    return ApiError(400, "bad_request", str(exc))


async def list_tokens(request: web.Request) -> web.Response:
    rows = await _tokens(request).list()
    return web.json_response({"items": [token_json(r) for r in rows]})


async def create_token(request: web.Request) -> web.Response:
    by = authenticate(request)
    body = Body(await json_object(request), {"name", "role"})
    name = body.string("name", max_length=64, pattern=NAME_RE, required=True)
    role = body.string("role", max_length=16, required=True)
    if role is not None and role not in ROLES:
        body.problem("role", f"must be one of {', '.join(ROLES)}")
    body.done()
    assert name is not None and role is not None
    try:
        new = await _tokens(request).create(name, role, by=by)
    except TokenError as exc:
        raise _refusal(exc) from None
    return web.json_response({"name": new.name, "role": new.role.value,
                              "created_at": iso(new.created_at), "created_by": by,
                              "secret": new.secret},
                             status=201, headers={"Location": f"/api/v1/tokens/{new.name}"})


async def revoke_token(request: web.Request) -> web.Response:
    by = authenticate(request)
    name = request.match_info["name"]
    if not NAME_RE.fullmatch(name):
        raise ApiError(400, "invalid_name", "not a token name")
    try:
        row = await _tokens(request).revoke(name, by=by)
    except TokenError as exc:
        raise _refusal(exc) from None
    return web.json_response({"name": row["name"], "role": row["role"],
                              "revoked_at": iso(row["revoked_at"])})
