"""The application factory: routes, middlewares, and the resources each app owns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from services.api import (
    dashboard,
    events,
    health,
    openapi_access,
    pauses,
    system,
    tasks,
    tokens,
    trees,
    workers,
)
from services.api.auth import access_middleware, check_table
from services.api.background import Background
from services.api.errors import error_middleware
from services.api.headers import add_headers
from services.api.limits import RateLimiter
from services.api.metrics import Metrics, metrics_handler, metrics_middleware
from services.api.routing import Methods, methods_middleware
from services.api.state import (
    CANCELLER,
    CELERY,
    DB,
    KEYS,
    METRICS,
    REDIS,
    SETTINGS,
    SSE_KEEPALIVE,
    STOPPING,
)
from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.keys import Keys
from shared.redis_client import connect
from shared.settings import Settings

log = structlog.get_logger("api")


def create_app(settings: Settings, *, sse_keepalive: float = 15.0) -> web.Application:
    metrics = Metrics()
    limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # Metrics outermost, so they count the JSON error responses too; a path's methods
        # are settled before access is checked (a 405 needs no token).
        middlewares=[metrics_middleware(metrics), error_middleware,
                     methods_middleware(Methods()), access_middleware(limiter)],
    )
    # Security headers (and CORS, when configured) on every response, streams included.
    app.on_response_prepare.append(add_headers)
    app.on_startup.append(check_table)
    app[SETTINGS] = settings
    app[KEYS] = Keys(settings.key_prefix)
    app[METRICS] = metrics
    app[STOPPING] = asyncio.Event()
    app[SSE_KEEPALIVE] = sse_keepalive
    app.cleanup_ctx.extend([_database, _redis, events.hub_context, _celery, _canceller])
    app.on_shutdown.append(events.end_streams)
    _routes(app.router, metrics)
    if not settings.api_token:
        log.warning("api.no_token", hint="set API_TOKEN, or make tokens with `taskctl token`")
    if settings.public_reads:
        log.warning("api.public_reads", hint="anyone who reaches the port reads every task")
    return app


def _routes(router: web.UrlDispatcher, metrics: Metrics) -> None:
    router.add_get("/healthz", health.healthz)
    router.add_get("/readyz", health.readyz)
    router.add_get("/metrics", metrics_handler(metrics))
    router.add_get("/api/v1/openapi.json", openapi_access.openapi_json)
    # The literal path first, so it is never read as a task id.
    router.add_post("/api/v1/tasks/cancel-all", tasks.cancel_all)
    pauses.add_routes(router)
    router.add_post("/api/v1/tasks", tasks.submit_task)
    trees.add_routes(router)
    router.add_get("/api/v1/tasks", tasks.list_tasks)
    router.add_get("/api/v1/tasks/{id}", tasks.get_task)
    router.add_get("/api/v1/tasks/{id}/results", tasks.task_results)
    router.add_post("/api/v1/tasks/{id}/cancel", tasks.cancel_task)
    router.add_post("/api/v1/tasks/{id}/resume", tasks.resume_task)
    router.add_get("/api/v1/actors", system.list_actors)
    router.add_get("/api/v1/states", system.task_states)
    router.add_get("/api/v1/system/status", system.system_status)
    router.add_post("/api/v1/workers/{node}/drain", workers.drain_worker)
    # HEAD would hold a connection open with nothing to send.
    router.add_get("/api/v1/events", events.stream_events, allow_head=False)
    router.add_post("/api/v1/events/ticket", events.issue_ticket)
    router.add_get("/api/v1/tokens", tokens.list_tokens, allow_head=False)
    router.add_post("/api/v1/tokens", tokens.create_token)
    router.add_delete("/api/v1/tokens/{name}", tokens.revoke_token)
    dashboard.add_routes(router)


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # No connection at start-up: the API comes up (and answers /healthz) while the
    # database is down, and serves 503 until it is back.
    app[DB] = await Db.connect(settings.database_url, min_size=0, max_size=settings.db_pool_size)
    yield
    await app[DB].close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = connect(app[SETTINGS].redis_url, decode=True)
    yield
    await app[REDIS].aclose()


async def _celery(app: web.Application) -> AsyncIterator[None]:
    app[CELERY] = make_celery(app[SETTINGS])
    yield
    app[CELERY].close()


async def _canceller(app: web.Application) -> AsyncIterator[None]:
    background = Background()
    app[CANCELLER] = Canceller(app[SETTINGS], app[DB], app[REDIS], app[CELERY])
    # A subtree cancel answers once its executions are stopping; its never-started tasks
    # (thousands, maybe) are written after the answer.
    app[CANCELLER].trees.defer = background.spawn
    pauses.add_pauser(app)
    log.info("api.ready", key_prefix=app[SETTINGS].key_prefix)
    yield
    await background.close()
