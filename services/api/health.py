"""Liveness (the process answers) and readiness (its database and Redis answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from aiohttp import web

from services.api.errors import error_response
from services.api.state import DB, REDIS

READY_TIMEOUT = 1.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _probe(check: Awaitable[object]) -> str:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await check
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT:g}s"
    except Exception as exc:  # any failure means not ready; the reason is the report
        return f"{type(exc).__name__}: {exc}"
    return "ok"


async def readyz(request: web.Request) -> web.Response:
    database, redis = await asyncio.gather(
        _probe(request.app[DB].ping()), _probe(request.app[REDIS].ping()))
    checks = {"database": database, "redis": redis}
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        return error_response(503, "not_ready", f"unavailable: {', '.join(down)}",
                              details=checks)
    return web.json_response({"status": "ready", "checks": checks})
