"""Every error leaves as `{"error": {"code", "message"}}`; nothing leaves as an HTML page.

Infrastructure outages (PostgreSQL, Redis, the broker) answer 503: a client can retry
those, and they say nothing about the request itself. The domain's own errors
(shared.errors) get their status here, and only those: any other exception, a stray
`KeyError` included, is a 500.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import redis.exceptions
import structlog
from aiohttp import web

from shared.errors import (
    BrokerUnavailable,
    CancelConflict,
    InvalidKwargs,
    TaskNotFound,
    TaskreaperError,
    TreeError,
    UnknownActor,
)

log = structlog.get_logger("api.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 411: "length_required",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable",
}
# Headers of an aiohttp HTTPException worth keeping on the JSON replacement.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")

UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused or timed-out connections, including asyncio's TimeoutError
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # server shutting down or starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.InvalidCatalogNameError,  # the database does not exist (yet)
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BrokerUnavailable,
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *,
                 details: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def domain_error(exc: TaskreaperError) -> ApiError | None:
    """What the API answers for a refusal of the domain; None for one it has no answer for."""
    match exc:
        case TaskNotFound():
            return ApiError(404, "not_found", str(exc))
        case CancelConflict():
            return ApiError(409, "conflict", str(exc), details={"status": exc.row["status"]})
        case UnknownActor():
            return ApiError(422, "unknown_actor", str(exc))
        case InvalidKwargs():
            return ApiError(422, "invalid_kwargs", f"invalid kwargs: {exc}",
                            details=exc.problems)
        case TreeError():
            return ApiError(409 if exc.conflict else 422, exc.code, str(exc))
    return None


def error_response(status: int, code: str, message: str, *,
                   details: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = dict(details)
    return web.json_response({"error": error}, status=status, headers=headers)


def dependency_of(exc: BaseException) -> str:
    """Which backing service failed, judged by where the exception was raised."""
    if isinstance(exc, BrokerUnavailable):
        return "broker"
    if isinstance(exc, asyncpg.PostgresError):
        return "database"
    if isinstance(exc, redis.exceptions.RedisError):
        return "redis"
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        module = frame.f_globals.get("__name__", "")
        for prefix, name in (("asyncpg", "database"), ("redis", "redis"), ("kombu", "broker")):
            if module.startswith(prefix):
                return name
    return "backing service"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, details=exc.details,
                              headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
        message = exc.text or ""
        if not message or message.startswith(f"{exc.status}:"):  # aiohttp's default text
            message = f"{exc.reason}: {request.method} {request.path}"
        return error_response(exc.status, _CODES.get(exc.status, "http_error"), message,
                              headers=headers)
    except asyncio.CancelledError:
        raise
    except UNAVAILABLE as exc:
        which = dependency_of(exc)
        log.warning("api.dependency_unavailable", dependency=which, method=request.method,
                    path=request.path, error=f"{type(exc).__name__}: {exc}")
        return error_response(503, "unavailable", f"{which} unavailable, retry later",
                              details={"dependency": which}, headers={"Retry-After": "1"})
    except TaskreaperError as exc:
        answer = domain_error(exc)
        if answer is None:
            log.exception("api.unmapped_domain_error", method=request.method, path=request.path)
            return error_response(500, "internal_error", "unexpected server error")
        return error_response(answer.status, answer.code, answer.message,
                              details=answer.details)
    except Exception:
        log.exception("api.unexpected_error", method=request.method, path=request.path)
        return error_response(500, "internal_error", "unexpected server error")
