"""Who may call what. One table gives every route the access it needs; one middleware looks
the route up, resolves the caller's token, and refuses before any handler runs.

401: no usable credentials. 403 `forbidden`: a token or ticket that is unknown, revoked or
expired; 403 `insufficient_role`: a live token whose role is below what the call needs.
A route missing from the table needs the admin role (and tests/test_access.py fails).
"""

from __future__ import annotations

import enum
import json
import re

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from services.api import tickets
from services.api.errors import ApiError, Handler
from services.api.limits import RateLimiter, retry_after
from services.api.state import DB, REDIS, SETTINGS
from shared.tokens import Principal, Role, principal_by_hash
from shared.tokens import authenticate as token_principal

log = structlog.get_logger("api.auth")


class Access(enum.Enum):
    PUBLIC = "public"  # probes, the page and its assets, the state table: nothing private
    READ = "read"  # a viewer, or anyone when PUBLIC_READS=true


Need = Access | Role

# Keyed by method and path shape (parameter names do not matter: `{id}` and `{task}` are one).
ROUTE_ACCESS: dict[tuple[str, str], Need] = {
    ("GET", "/healthz"): Access.PUBLIC,
    ("GET", "/readyz"): Access.PUBLIC,
    ("GET", "/metrics"): Access.PUBLIC,
    ("GET", "/"): Access.PUBLIC,
    ("GET", "/static/{}"): Access.PUBLIC,
    ("GET", "/api/v1/states"): Access.PUBLIC,
    ("GET", "/api/v1/openapi.json"): Access.READ,
    ("GET", "/api/v1/tasks"): Access.READ,
    ("GET", "/api/v1/tasks/{}"): Access.READ,
    ("GET", "/api/v1/tasks/{}/results"): Access.READ,
    ("GET", "/api/v1/tasks/{}/tree"): Access.READ,
    ("GET", "/api/v1/actors"): Access.READ,
    ("GET", "/api/v1/system/status"): Access.READ,
    ("GET", "/api/v1/workers"): Access.READ,
    # A stream holds resources: it always needs a token (or a ticket bought with one).
    ("GET", "/api/v1/events"): Role.VIEWER,
    ("POST", "/api/v1/events/ticket"): Role.VIEWER,
    ("POST", "/api/v1/tasks"): Role.OPERATOR,
    ("POST", "/api/v1/tasks:batch"): Role.OPERATOR,
    ("POST", "/api/v1/tasks/{}/cancel"): Role.OPERATOR,
    ("POST", "/api/v1/tasks/cancel-all"): Role.OPERATOR,
    ("POST", "/api/v1/tasks/{}/resume"): Role.OPERATOR,
    ("POST", "/api/v1/tasks/{}/pause"): Role.OPERATOR,
    ("POST", "/api/v1/tasks/pause-all"): Role.OPERATOR,
    ("POST", "/api/v1/tasks/resume-all"): Role.OPERATOR,
    ("POST", "/api/v1/workers/{}/drain"): Role.OPERATOR,
    ("GET", "/api/v1/tokens"): Role.ADMIN,
    ("POST", "/api/v1/tokens"): Role.ADMIN,
    ("DELETE", "/api/v1/tokens/{}"): Role.ADMIN,
}
# Routes that take a stream ticket (`?ticket=`) in place of the Authorization header.
TICKET_ROUTES = frozenset({("GET", "/api/v1/events")})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

PRINCIPAL = web.RequestKey("principal", Principal)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskreaper"'}
_PARAM = re.compile(r"\{[^}]*\}")


def shape(path: str) -> str:
    return _PARAM.sub("{}", path)


def route_key(method: str, canonical: str) -> tuple[str, str]:
    return ("GET" if method == "HEAD" else method, shape(canonical))


def need_of(method: str, canonical: str) -> Need:
    return ROUTE_ACCESS.get(route_key(method, canonical), Role.ADMIN)


def _needed_role(need: Need) -> Role:
    return Role.VIEWER if need is Access.READ else need  # type: ignore[return-value]


def _bearer(request: web.Request) -> str | None:
    """The bearer token of the request; None without an Authorization header."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "Authorization must be 'Bearer <token>'",
                       headers=_CHALLENGE)
    return token


async def _caller(request: web.Request, key: tuple[str, str]) -> Principal:
    app = request.app
    token = _bearer(request)
    if token is not None:
        principal = await token_principal(app[DB], app[SETTINGS], token)
        if principal is None:
            raise ApiError(403, "forbidden", "invalid bearer token")
        return principal
    ticket = request.query.get("ticket") if key in TICKET_ROUTES else None
    if ticket is None:
        raise ApiError(401, "unauthorized", "missing bearer token", headers=_CHALLENGE)
    secret_hash = await tickets.redeem(app[REDIS], app[SETTINGS].key_prefix, ticket)
    principal = (await principal_by_hash(app[DB], app[SETTINGS], secret_hash)
                 if secret_hash is not None else None)
    if principal is None:
        raise ApiError(403, "forbidden", "stream ticket unknown, used or expired")
    return principal


def _refuse_role(principal: Principal, needed: Role, what: str) -> ApiError:
    return ApiError(403, "insufficient_role",
                    f"{what} needs the {needed.value} role; token {principal.name!r} is "
                    f"{principal.role.value}",
                    details={"needed": needed.value, "role": principal.role.value})


async def _asks_force(request: web.Request) -> bool:
    """Whether the JSON body sets `force: true`: a forced action needs the admin role, on
    every route that takes the flag. Malformed bodies are the handler's to refuse."""
    raw = await request.read()  # kept by aiohttp: the handler reads the same bytes
    if b'"force"' not in raw:
        return False
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("force") is True


def access_middleware(limiter: RateLimiter) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        resource = route.resource if request.match_info.http_exception is None else None
        if resource is None:
            return await handler(request)  # no such route: the handler answers 404 or 405
        key = route_key(request.method, resource.canonical)
        need = need_of(request.method, resource.canonical)
        if need is Access.PUBLIC or (need is Access.READ
                                     and request.app[SETTINGS].public_reads):
            return await handler(request)
        principal = await _caller(request, key)
        needed = _needed_role(need)
        if not principal.role.allows(needed):
            raise _refuse_role(principal, needed, f"{request.method} {key[1]}")
        if request.method in MUTATING:
            if not principal.role.allows(Role.ADMIN) and await _asks_force(request):
                raise _refuse_role(principal, Role.ADMIN, "force")
            wait = limiter.take(principal.secret_hash)
            if wait is not None:
                raise ApiError(429, "rate_limited",
                               f"too many calls for token {principal.name!r}; retry later",
                               headers={"Retry-After": retry_after(wait)})
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


async def check_table(app: web.Application) -> None:
    """At start-up: a route the table forgot is admin-only until it gets its line; say so."""
    for route in app.router.routes():
        if route.resource is not None and route.method != "HEAD" \
                and route_key(route.method, route.resource.canonical) not in ROUTE_ACCESS:
            log.warning("api.route_without_access", method=route.method,
                        path=route.resource.canonical, hint="admin only until it has a line")


def caller(request: web.Request) -> Principal | None:
    """Who the request acts for; None on a route that let it in without a token."""
    return request.get(PRINCIPAL)


def authenticate(request: web.Request) -> str:
    """The name of the token's owner, for audit rows and events. The middleware has already
    checked the token and the role; a handler calls this to learn who acts."""
    principal = request.get(PRINCIPAL)
    if principal is None:
        raise ApiError(401, "unauthorized", "missing bearer token", headers=_CHALLENGE)
    return principal.name
