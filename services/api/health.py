"""Liveness (the process answers) and readiness (its database and Redis answer).

Readiness names what is down and how (`down` or `timeout`), never an exception's text: the
probe is public, and a driver's message can carry hosts, users and paths. The log has it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import structlog
from aiohttp import web

from services.api.errors import error_response
from services.api.state import DB, REDIS

log = structlog.get_logger("api.health")

READY_TIMEOUT = 1.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _probe(name: str, check: Awaitable[object]) -> str:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await check
    except TimeoutError:
        log.warning("api.not_ready", dependency=name, error=f"no answer within {READY_TIMEOUT:g}s")
        return "timeout"
    except Exception as exc:  # any failure means not ready; what it was goes to the log only
        log.warning("api.not_ready", dependency=name, error=f"{type(exc).__name__}: {exc}")
        return "down"
    return "ok"


async def readyz(request: web.Request) -> web.Response:
    database, redis = await asyncio.gather(
        _probe("database", request.app[DB].ping()), _probe("redis", request.app[REDIS].ping()))
    checks = {"database": database, "redis": redis}
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        return error_response(503, "not_ready", f"unavailable: {', '.join(down)}",
                              details=checks)
    return web.json_response({"status": "ready", "checks": checks})
