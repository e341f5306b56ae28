"""The sidecar: a small asyncio loop on a thread beside each pool process's task.

It keeps the running execution's cancel token current (Redis event the moment it
arrives, the heartbeat's DB read as the fallback poll), hands heartbeats to the
worker's main process (or writes them itself when none takes them), writes
checkpoints over this process's single DB connection, keeps the execution
registered in Redis, enforces the time limit, and runs the in-process watchdog.
Task code reaches it only through `call()`.

Each job has a module of its own; this one wires them together and owns the
execution's lifecycle on the loop (begin, end, requeue):

    loop_thread.py        the loop on its thread (shared with the guardian)
    cancel_listener.py    cancel events, over subscription.py (shared with the guardian)
    drain.py              a drain of this worker: the execution stops with reason `shutdown`
    heartbeat.py          the beat: progress row, fallback poll, registry refresh, log lines
    beat_link.py          beats to the main process, which writes the node's in one statement
    checkpoint_writer.py  chunk results, buffered through a DB outage
    registry_entry.py     the execution's entry in the Redis registry
    time_limit.py         the actor's time limit
    watchdog.py           the kill when a cancelled task outlives its grace
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import psutil
import structlog

from services.worker.cancel_listener import CancelListener
from services.worker.checkpoint_writer import CheckpointWriter
from services.worker.db_connection import DB_CALL_TIMEOUT as DB_CALL_TIMEOUT
from services.worker.db_connection import OneConnection
from services.worker.drain import PoolDrain
from services.worker.execution import Execution
from services.worker.heartbeat import Heartbeat
from services.worker.loop_thread import LoopThread
from services.worker.registry_entry import RegistryEntry
from services.worker.time_limit import enforce_time_limit
from services.worker.watchdog import Watchdog
from shared.db import Db
from shared.events import encode
from shared.keys import Keys
from shared.redis_client import connect
from shared.settings import Settings
from shared.states import TaskStatus

log = structlog.get_logger("worker.sidecar")
T = TypeVar("T")

INTERRUPT_SIGNAL = signal.SIGUSR2
END_RETRY_SECONDS = 600.0


class Sidecar:
    def __init__(self, settings: Settings, node: str) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.node = node
        self.pid = os.getpid()
        self.pid_started = psutil.Process(self.pid).create_time()
        main_thread_id = threading.main_thread().ident
        assert main_thread_id is not None  # a started thread has one
        self.main_thread_id = main_thread_id
        self.current: Execution | None = None
        self.thread = LoopThread("taskreaper-sidecar")
        self.loop = self.thread.loop
        # Commands get a timeout, so a stalled Redis cannot hold up heartbeats; the
        # subscription waits for events as long as it takes, on a client of its own.
        self.redis = connect(settings.redis_url, socket_timeout=2.0)
        self._events = connect(settings.redis_url, socket_timeout=None)
        self.connection = OneConnection(settings.database_url)
        self.registry = RegistryEntry(self.redis, self.keys, settings, node, self.pid,
                                      self.pid_started)
        self.checkpoints = CheckpointWriter(self.connection)
        self.heartbeat = Heartbeat(self)
        self.watchdog = Watchdog(self.loop, self.connection, self.registry, self.pid)
        self.listener = CancelListener(self._events, self.keys, lambda: self.current,
                                       self.trigger)
        self.drain = PoolDrain(self._events, self.keys, node, lambda: self.current,
                               main_thread_id, INTERRUPT_SIGNAL)
        # Per execution: its heartbeat and, with a time limit, the limit's countdown.
        self._tasks: dict[str, list[asyncio.Task[Any]]] = {}

    # -- thread plumbing ----------------------------------------------------------------

    def start(self) -> None:
        self.thread.start(self._listen)

    def _listen(self) -> None:
        self.heartbeat.start()
        self.thread.spawn(self.listener.run())
        self.thread.spawn(self.drain.run())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return self.thread.call(coro, timeout)

    async def db(self) -> Db:
        return await self.connection.get()

    def close(self) -> None:
        """Stops the loop and lets go of its connections (a pool process never needs to:
        its end ends them)."""
        self.call(self._close_connections())
        self.thread.stop()

    async def _close_connections(self) -> None:
        self.heartbeat.link.close()
        await self.connection.close()
        await self.redis.aclose()
        await self._events.aclose()

    # -- cancels ------------------------------------------------------------------------

    async def watch(self, task_id: str) -> None:
        """Listens to one task's cancel channel (before its claim: no cancel slips by)."""
        await self.listener.watch(task_id)

    async def forget(self, task_id: str) -> None:
        await self.listener.forget(task_id)

    def trigger(self, ex: Execution, reason: str, *, forced: bool, via: str) -> None:
        """Sets the token and arms the watchdog. Runs on the sidecar loop."""
        first = ex.token.cancel(reason, forced=forced)
        if first:
            log.info("task.cancel_observed", task_id=ex.id, attempt=ex.attempt, via=via,
                     reason=reason, forced=forced)
            if ex.interruptible and ex.in_user_code:
                signal.pthread_kill(self.main_thread_id, INTERRUPT_SIGNAL)
        elif not forced:
            return
        grace = self.settings.force_window if forced else self.settings.cancel_grace
        self.watchdog.arm(ex, grace)

    # -- execution lifecycle ------------------------------------------------------------

    async def publish(self, kind: str, ex: Execution, **fields: Any) -> None:
        p = ex.progress
        try:
            await self.redis.publish(self.keys.events_channel, encode(
                kind, task_id=ex.id, attempt=ex.attempt, actor=ex.actor, done=p.done,
                failed=p.failed, total=p.total, current_chunk=p.current, **fields))
        except Exception as exc:
            log.debug("worker.event_publish_failed", error=str(exc))

    async def begin(self, ex: Execution) -> None:
        self.current = ex
        await self.publish("task.changed", ex, status=TaskStatus.RUNNING, worker=self.node)
        tasks = [self.loop.create_task(self.heartbeat.run(ex))]
        if ex.time_limit:
            tasks.append(self.loop.create_task(enforce_time_limit(
                ex, ex.time_limit, connection=self.connection,
                cancel_grace=self.settings.cancel_grace, trigger=self.trigger)))
        self._tasks[ex.id] = tasks
        self.drain.on_begin(ex)

    def _stop(self, ex: Execution) -> None:
        ex.finished.set()
        for t in self._tasks.pop(ex.id, []):
            t.cancel()
        self.watchdog.disarm(ex)

    async def _release(self, ex: Execution) -> None:
        await self.forget(ex.id)
        await self.registry.remove(ex)
        if self.current is ex:
            self.current = None

    async def end(self, ex: Execution, status: TaskStatus, *, outcome: str | None,
                  error: str | None) -> str | None:
        """Flushes the checkpoint and records how the execution ended (fenced by attempt)."""
        self._stop(ex)
        ended: str | None = None
        # Holding the pool slot is better than losing how the task ended.
        deadline = time.monotonic() + END_RETRY_SECONDS
        while True:
            try:
                await self.checkpoints.flush(ex)
                db = await self.db()
                ended = await db.finish_task(ex.task_id, ex.attempt, status, outcome=outcome,
                                             error=error, done=ex.progress.done,
                                             failed=ex.progress.failed, total=ex.progress.total)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    log.error("task.finish_unrecorded", task_id=ex.id, error=str(exc))
                    break
                log.warning("task.finish_retry", task_id=ex.id, error=str(exc))
                await asyncio.sleep(1.0)
        await self._release(ex)
        if ended:
            await self.publish("task.changed", ex, status=ended)
        return ended

    async def requeue(self, ex: Execution, message_id: Any, eta: Any, error: str | None) -> Any:
        """Ends this execution by handing the task to a new attempt (a retry)."""
        self._stop(ex)
        try:
            await self.checkpoints.flush(ex)
            db = await self.db()
            return await db.requeue_execution(ex.task_id, ex.attempt, message_id, eta, error)
        finally:
            await self._release(ex)

    # -- checkpoints ----------------------------------------------------------------------

    async def save_result(self, ex: Execution, chunk: int, ok: bool, result: Any) -> bool:
        return await self.checkpoints.save(ex, chunk, ok, result)
