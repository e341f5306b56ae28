"""The reaper process: leadership plus the supervised cancel-executor and reconcile loops."""

from __future__ import annotations

import asyncio
import os
import socket

import structlog
from prometheus_client import start_http_server

from services.reaper.broker_scan import BrokerScan
from services.reaper.celery_ops import CeleryOps
from services.reaper.context import ReaperContext
from services.reaper.executor import CancelExecutor
from services.reaper.leader import LeaderLock
from services.reaper.metrics import ReaperMetrics
from services.reaper.reconcile import Reconciler
from services.reaper.supervisor import Supervisor
from services.reaper.sweeper import FenceSweeper
from shared.broker import make_celery
from shared.db import Db
from shared.keys import Keys
from shared.redis_client import connect
from shared.settings import Settings

log = structlog.get_logger("reaper")


async def _connect_db(settings: Settings) -> Db:
    while True:
        try:
            return await Db.connect(settings.database_url, min_size=1, max_size=4)
        except Exception as exc:
            log.warning("reaper.db_unavailable", error=str(exc))
            await asyncio.sleep(1.0)


async def run_reaper(settings: Settings, stop: asyncio.Event) -> None:
    keys = Keys(settings.key_prefix)
    redis = connect(settings.redis_url)
    celery = make_celery(settings, "taskreaper-reaper")
    db = await _connect_db(settings)
    identity = f"{socket.gethostname()}:{os.getpid()}"
    metrics = ReaperMetrics()
    ctx = ReaperContext(settings=settings, db=db, redis=redis, celery=CeleryOps(celery),
                        keys=keys, leader=LeaderLock(redis, keys.leader, settings.leader_ttl,
                                                     identity), metrics=metrics)
    if settings.reaper_metrics_port:
        start_http_server(settings.reaper_metrics_port, addr=settings.host,
                          registry=metrics.registry)

    async def lead() -> None:
        was = ctx.leader.is_leader
        try:
            now = await ctx.leader.acquire_or_renew()
        except Exception:
            ctx.leader.is_leader = False
            raise
        metrics.leader.set(1 if now else 0)
        if now != was:
            log.info("reaper.leadership", leader=now, identity=identity)

    executor, reconciler = CancelExecutor(ctx), Reconciler(ctx)
    supervisor = Supervisor()
    try:
        await lead()
    except Exception as exc:
        log.warning("reaper.redis_unavailable", error=str(exc))
    supervisor.every("leadership", settings.leader_ttl / 3, lead)
    supervisor.every("cancel_executor", min(0.25, settings.reconcile_interval), executor.tick)
    supervisor.every("reconcile", settings.reconcile_interval, reconciler.tick)
    supervisor.every("broker_scan", min(0.5, settings.orphan_scan_interval),
                     BrokerScan(ctx).tick)
    supervisor.every("sweeper", 0.1, FenceSweeper(ctx).tick)
    log.info("reaper.started", identity=identity, reconcile_interval=settings.reconcile_interval)
    try:
        await stop.wait()
    finally:
        await supervisor.stop()
        try:
            await ctx.leader.release()
        except Exception as exc:
            log.warning("reaper.release_failed", error=str(exc))
        ctx.celery.close()
        await redis.aclose()
        try:
            await asyncio.wait_for(db.close(), 5.0)
        except (TimeoutError, OSError):
            db.terminate()
        log.info("reaper.stopped", identity=identity)
