"""The pool watch: the worker's main process notices at once when one of its pool processes
dies, and keeps the worker's own liveness fresh in Redis.

A pool process killed by the OOM killer, a segfault or kill -9 cannot record its end. The
reaper would settle its row after the heartbeat timeout; the main process, which outlives
its children, knows within a poll. Every poll it reads the pool's pids (Celery's own list,
no scan of the host's processes); a process seen at the last poll and gone now has its
executions settled by the same verdict as the reaper's (shared.verdict): `lost`, a new
attempt under `auto_resume`, or what the stop under way says (`cancelled`, `paused`) when
it was asked to stop (the ladder killed it, or it died while stopping). A pool process
that exits because it was recycled has no running row, so nothing happens.

Left alone: the executions of a worker shutting down (its drain puts them back in the queue
itself), and for a moment those of a message Celery revoked (the revoke's own cancel is
under way and says why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psutil
import redis.asyncio as aioredis
import structlog
from celery import Celery

from services.worker.db_connection import DB_CALL_TIMEOUT, OneConnection
from services.worker.guardian import Guardian
from services.worker.loop_thread import LoopThread
from services.worker.shutdown import draining
from shared.events import encode
from shared.keys import Keys
from shared.registry import prune_lapsed_workers, worker_alive
from shared.settings import Settings
from shared.states import STOPPING, Outcome
from shared.verdict import settle_gone

log = structlog.get_logger("worker.pool_watch")

POLL_INTERVAL = 0.5
# How long a dead process's execution whose message Celery revoked is left to the revoke.
REVOKED_WAIT = 1.0
# Records of workers gone this long are dropped (by any live worker).
PRUNE_AFTER = 3600.0
PRUNE_EVERY = 60.0


def liveness_interval(settings: Settings) -> float:
    """Often enough that a live worker never looks gone between two renewals."""
    return max(0.2, min(5.0, settings.heartbeat_timeout / 3))


def _alive(pid: int, started: float) -> bool:
    """False only when the process is known to be gone: exited, a zombie, or its pid reused."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:
        return True  # cannot tell: never settle a row on a guess


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _pool_pids(consumer: Any) -> list[int] | None:
    """Celery's list of its pool processes; None when it cannot be read right now (the pool
    not up yet, or changing under this thread)."""
    try:
        return [int(p) for p in consumer.pool.info["processes"]]
    except Exception:
        return None


def _shutting_down() -> bool:
    """A drain hands back the executions of processes that die meanwhile itself; Celery's
    own shutdown ends the pool's processes with it."""
    from celery.worker import state as worker_state

    return draining() or bool(worker_state.should_stop or worker_state.should_terminate)


def _revoked(message_id: str) -> bool:
    from celery.worker import state as worker_state

    return message_id in worker_state.revoked


class PoolWatch:
    def __init__(self, settings: Settings, node: str, record: str, celery: Celery, *,
                 pool_pids: Callable[[], list[int] | None], thread: LoopThread | None = None,
                 connection: OneConnection | None = None) -> None:
        """`record` is the worker's entry in the `workers` hash (written again if it went
        missing). Beside a guardian, pass its loop and DB connection: the main process then
        keeps one of each."""
        self.settings = settings
        self.node = node
        self.keys = Keys(settings.key_prefix)
        self._record = record
        self._celery = celery
        self._pool_pids = pool_pids
        self._own_thread = thread is None
        self.thread = thread or LoopThread("taskreaper-pool-watch")
        self.connection = connection or OneConnection(settings.database_url)
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Future[None] | None = None
        # pid -> process start time, as of the last poll
        self._known: dict[int, float] = {}

    @classmethod
    def of_consumer(cls, settings: Settings, node: str, record: str, consumer: Any,
                    **kwargs: Any) -> PoolWatch:
        return cls(settings, node, record, consumer.app, pool_pids=lambda: _pool_pids(consumer),
                   **kwargs)

    def start(self) -> None:
        if self._own_thread:
            self.thread.start()
        self._task = asyncio.run_coroutine_threadsafe(self._start(), self.thread.loop).result(10)

    async def _start(self) -> asyncio.Future[None]:
        self._redis = aioredis.from_url(self.settings.redis_url, socket_timeout=2.0,
                                        socket_connect_timeout=2.0)
        return self.thread.spawn(self.run())

    def stop(self) -> None:
        """Stops renewing the liveness (before the worker's record is removed at shutdown)."""
        task = self._task
        if task is not None:
            self.thread.loop.call_soon_threadsafe(task.cancel)
        if self._own_thread:
            self.thread.stop()

    async def run(self) -> None:
        beat_every = liveness_interval(self.settings)
        next_beat = next_prune = 0.0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + beat_every
                await self._beat()
            if now >= next_prune:
                next_prune = now + PRUNE_EVERY
                await self._prune()
            try:
                await self.poll()
            except Exception as exc:
                log.warning("worker.pool_watch_error", node=self.node, error=repr(exc))
            await asyncio.sleep(POLL_INTERVAL)

    async def _beat(self) -> None:
        assert self._redis is not None
        try:
            await worker_alive(self._redis, self.keys, self.node,
                               self.settings.heartbeat_timeout, self._record)
        except Exception as exc:
            log.warning("worker.liveness_failed", node=self.node, error=str(exc))

    async def _prune(self) -> None:
        assert self._redis is not None
        try:
            dropped = await prune_lapsed_workers(self._redis, self.keys, PRUNE_AFTER)
            if dropped:
                log.info("worker.lapsed_workers_pruned", count=dropped)
        except Exception as exc:
            log.warning("worker.liveness_failed", node=self.node, error=str(exc))

    async def poll(self) -> list[int]:
        """Settles the executions of the pool processes that died since the last poll;
        returns their pids."""
        now = self._pool_pids()
        if now is None:
            return []
        # Leaving Celery's list is not proof enough: a process is watched until it is gone.
        dead = [pid for pid, started in self._known.items() if not _alive(pid, started)]
        for pid in dead:
            del self._known[pid]
        for pid in now:
            if pid not in self._known and (started := _started(pid)) is not None:
                self._known[pid] = started
        if dead and not _shutting_down():
            await self._settle(dead)
        return dead

    async def _settle(self, pids: list[int]) -> None:
        db = await self.connection.get()
        rows = await asyncio.wait_for(db.executions_of_processes(self.node, pids),
                                      DB_CALL_TIMEOUT)
        for row in rows:
            if _revoked(str(row.message_id)):
                self.thread.spawn(self._settle_later(row))
                continue
            await self._settle_one(row)

    async def _settle_later(self, row: Any) -> None:
        await asyncio.sleep(REVOKED_WAIT)
        try:
            await self._settle_one(row)
        except Exception as exc:
            log.warning("worker.pool_watch_error", node=self.node, error=repr(exc))

    async def _settle_one(self, row: Any) -> None:
        db = await self.connection.get()
        # A process that died while asked to stop (a cancel, a pause) was killed for it, or
        # died stopping: it ends as that stop says. A running one is simply gone.
        outcome = Outcome.KILLED if row.status in STOPPING else Outcome.GONE
        verdict = await settle_gone(db, self._celery, row, self._publish_change,
                                    outcome=outcome)
        if verdict.status:
            log.warning("worker.pool_process_lost", task_id=str(row.id), attempt=row.attempt,
                        pid=row.pid, status=verdict.status, resumed=verdict.resumed,
                        outcome=None if verdict.resumed else outcome)

    async def _publish_change(self, task_id: Any, status: str, **extra: Any) -> None:
        assert self._redis is not None
        try:
            await self._redis.publish(self.keys.events_channel, encode(
                "task.changed", task_id=str(task_id), status=status, **extra))
        except Exception as exc:
            log.warning("worker.event_publish_failed", error=str(exc))


def start_pool_watch(settings: Settings, node: str, record: str, consumer: Any,
                     guardian: Guardian | None) -> PoolWatch:
    """Starts the watch in the worker's main process, on the guardian's loop and DB
    connection when there is a guardian."""
    if guardian is None:
        watch = PoolWatch.of_consumer(settings, node, record, consumer)
    else:
        watch = PoolWatch.of_consumer(settings, node, record, consumer, thread=guardian.thread,
                                      connection=guardian.connection)
    watch.start()
    return watch
