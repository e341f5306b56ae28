"""The Celery worker app: one Celery task per actor, all run through the Runtime."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from typing import Any

import psutil
import redis
import structlog
from celery import Celery, Task
from celery.signals import (
    celeryd_after_setup,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from services.worker import control  # noqa: F401  (registers the remote control command)
from services.worker.actor import Actor, discover
from services.worker.celery_control import install_celery_control
from services.worker.guardian import Guardian
from services.worker.lifecycle import RetryLater
from services.worker.pool_watch import PoolWatch, start_pool_watch
from services.worker.resource_guard import MemoryLimits, configure_limits
from services.worker.runtime import Runtime
from services.worker.shutdown import WorkerDrain
from shared.broker import make_celery
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings

log = structlog.get_logger("worker.app")

# What an unset ACTOR_MODULES stands for: the actors shipped with the worker.
BUILTIN_ACTORS = "services.worker.actors"


def load_actors(settings: Settings) -> list[Actor]:
    named = settings.actor_modules or BUILTIN_ACTORS
    modules = [m.strip() for m in named.split(",") if m.strip()]
    return discover(importlib.import_module(m) for m in modules)


def create_worker_app(settings: Settings, actors: list[Actor]) -> tuple[Celery, Runtime]:
    app = make_celery(settings, "taskreaper-worker")
    app.conf.broker_transport = "services.worker.transport:Transport"
    runtime = Runtime(settings, app)
    for act in actors:
        _register(app, runtime, act)
    install_celery_control(app, settings, [a.name for a in actors])
    configure_limits(MemoryLimits.of(actors, settings))  # before the pool forks
    watches: list[PoolWatch] = []

    @celeryd_after_setup.connect(weak=False)
    def _named(sender: str, **_: Any) -> None:
        # Before the pool forks, so every child inherits the node name.
        runtime.node = sender

    @worker_process_init.connect(weak=False)
    def _child_started(**_: Any) -> None:
        runtime.start_process()

    @worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        guardian = Guardian(settings, runtime.node) if settings.guardian else None
        if guardian is not None:
            guardian.start()
        record = announce_worker(settings, runtime.node, present=True)
        # sender: the consumer, which knows the pool's processes
        watches.append(start_pool_watch(settings, runtime.node, record, sender, guardian))
        # SIGTERM, SIGINT and drain requests: the tasks go on elsewhere, from their checkpoints.
        WorkerDrain(settings, runtime.node).install(sender)

    @worker_shutdown.connect(weak=False)
    def _gone(**_: Any) -> None:
        for watch in watches:
            watch.stop()  # first: its liveness renewal must not bring the record back
        announce_worker(settings, runtime.node, present=False)

    return app, runtime


def announce_worker(settings: Settings, node: str, *, present: bool) -> str:
    """Records this worker's main process, so operators' tools can tell it from look-alikes,
    with its liveness (renewed by the pool watch); returns the record."""
    keys = Keys(settings.key_prefix)
    me = psutil.Process()
    record = json.dumps({
        "node": node, "host": settings.hostname, "pid": me.pid,
        "pid_started": me.create_time(), "concurrency": settings.worker_concurrency,
        "started_at": time.time()})
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        with client.pipeline(transaction=True) as pipe:
            if present:
                pipe.hset(keys.workers, node, record)
                pipe.zadd(keys.workers_alive, {node: time.time() + settings.heartbeat_timeout})
            else:
                pipe.hdel(keys.workers, node)
                pipe.zrem(keys.workers_alive, node)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("worker.announce_failed", node=node, error=str(exc))
    finally:
        client.close()
    return record


def _register(app: Celery, runtime: Runtime, act: Actor) -> None:
    def run(self: Task, task_id: str) -> str:
        try:
            return runtime.execute(act, task_id, self.request.id)
        except RetryLater as exc:
            raise self.retry(countdown=1.0, exc=exc) from exc

    # Retried for as long as it takes: a delivery that could not be claimed yet (the DB
    # away, the row busy) must not be dropped after a few tries. (`retry(max_retries=None)`
    # would mean "the task's default", which is 3.)
    app.task(name=act.name, bind=True, queue=act.queue, acks_late=True, max_retries=None)(run)


async def publish_catalogue(settings: Settings, actors: list[Actor], attempts: int = 30) -> None:
    """Writes the actor catalogue to the DB, where the API validates submissions against it."""
    for attempt in range(1, attempts + 1):
        try:
            db = await Db.connect(settings.database_url, min_size=1, max_size=1)
            try:
                for act in actors:
                    await db.upsert_actor(act.name, act.queue, act.params, act.options)
            finally:
                await db.close()
            log.info("worker.actors_published", actors=[a.name for a in actors])
            return
        except Exception as exc:
            log.warning("worker.actors_publish_failed", attempt=attempt, error=str(exc))
            await asyncio.sleep(1.0)
    raise RuntimeError("could not publish the actor catalogue: database unreachable")
