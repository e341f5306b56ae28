"""The sidecar: a small asyncio loop on a thread beside each pool process's task.

It keeps the running execution's cancel token current (Redis event the moment it
arrives, the heartbeat's DB read as the fallback poll), writes heartbeats and
checkpoints over this process's single DB connection, keeps the execution
registered in Redis, enforces the time limit, and runs the in-process watchdog.
Task code reaches it only through `call()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg
import psutil
import redis.asyncio as aioredis
import structlog

from services.worker.execution import Execution
from services.worker.heartbeat import HeartbeatLog
from shared.cancellation import event_matches
from shared.db import Db
from shared.events import encode
from shared.keys import Keys
from shared.redis_client import connect
from shared.registry import refresh, unregister
from shared.settings import Settings
from shared.states import Outcome, TaskStatus

log = structlog.get_logger("worker.sidecar")
T = TypeVar("T")

INTERRUPT_SIGNAL = signal.SIGUSR2
# One DB call of the sidecar on behalf of a task; past it the DB counts as unreachable.
DB_CALL_TIMEOUT = 5.0
END_RETRY_SECONDS = 600.0
# What a DB outage looks like from here; anything else is a real error.
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.CannotConnectNowError)


class Sidecar:
    def __init__(self, settings: Settings, node: str) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.node = node
        self.pid = os.getpid()
        self.pid_started = psutil.Process(self.pid).create_time()
        self.main_thread_id = threading.main_thread().ident
        self.current: Execution | None = None
        self.loop = asyncio.new_event_loop()
        self.redis: aioredis.Redis | None = None
        self._events: aioredis.Redis | None = None
        self._db: Db | None = None
        self._db_lock: asyncio.Lock | None = None
        # The heartbeat and a checkpoint may both find buffered results to write: one at a
        # time, or both write the same chunk and both take it off the buffer.
        self._flush_lock: asyncio.Lock | None = None
        self._tasks: dict[str, list[asyncio.Task[Any]]] = {}
        # The one subscription of this process: the fleet-wide channel (cancel-all) plus
        # the channel of the task it is about to run or runs.
        self._pubsub: Any = None
        self._watched: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._published: dict[str, tuple[Any, ...]] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskreaper-sidecar", daemon=True)

    # -- thread plumbing ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        # Commands get a timeout, so a stalled Redis cannot hold up heartbeats; the
        # subscription waits for events as long as it takes, on a client of its own.
        self.redis = connect(self.settings.redis_url, socket_timeout=2.0)
        self._events = connect(self.settings.redis_url, socket_timeout=None)
        self._db_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        # Held here: the loop keeps only a weak reference to a task.
        self._listener = self.loop.create_task(self._listen())
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # its work must not land later, unseen
            raise

    async def db(self) -> Db:
        assert self._db_lock is not None
        async with self._db_lock:
            if self._db is None:
                # At most one connection per pool process, opened on first use.
                self._db = await Db.connect(self.settings.database_url, min_size=0, max_size=1)
            return self._db

    # -- cancel events ------------------------------------------------------------------

    async def _listen(self) -> None:
        assert self._events is not None
        backoff = 0.1
        while True:
            try:
                async with self._events.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.keys.cancel_channel, *self._watched)
                    self._pubsub = pubsub
                    backoff = 0.1
                    async for message in pubsub.listen():
                        if message and message.get("type") == "message":
                            self._on_event(json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("worker.cancel_listener_error", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._pubsub = None

    async def watch(self, task_id: str) -> None:
        """Listens to one task's cancel channel (before its claim: no cancel slips by)."""
        channel = self.keys.task_cancel_channel(task_id)
        self._watched.add(channel)
        if self._pubsub is not None:
            try:
                await self._pubsub.subscribe(channel)
            except Exception as exc:  # the listener resubscribes when it reconnects
                log.warning("worker.cancel_subscribe_failed", task_id=task_id, error=str(exc))

    async def forget(self, task_id: str) -> None:
        channel = self.keys.task_cancel_channel(task_id)
        if channel not in self._watched:
            return
        self._watched.discard(channel)
        if self._pubsub is not None:
            try:
                await self._pubsub.unsubscribe(channel)
            except Exception as exc:
                log.warning("worker.cancel_subscribe_failed", task_id=task_id, error=str(exc))

    def _on_event(self, event: dict[str, Any]) -> None:
        ex = self.current
        if ex is None or ex.finished.is_set():
            return
        if event_matches(event, task_id=ex.id, actor=ex.actor, queue=ex.queue,
                         started_at=ex.started_at):
            self.trigger(ex, event.get("reason") or "cancelled", forced=bool(event.get("force")),
                         via="event")

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
        for old in self._tasks.pop(f"watchdog:{ex.id}", []):
            old.cancel()
        self._tasks[f"watchdog:{ex.id}"] = [self.loop.create_task(self._watchdog(ex, grace))]

    async def _watchdog(self, ex: Execution, grace: float) -> None:
        await asyncio.sleep(grace)
        if ex.finished.is_set():
            return
        try:
            db = await self.db()
            ended = await asyncio.wait_for(db.finish_task(
                ex.task_id, ex.attempt, TaskStatus.CANCELLED, outcome=Outcome.KILLED,
                done=ex.progress.done, failed=ex.progress.failed), 2.0)
        except Exception as exc:
            log.warning("task.watchdog_db_error", task_id=ex.id, error=str(exc))
            ended = "unknown"
        if ended is None and ex.finished.is_set():
            return  # the task recorded its own end first
        # Otherwise the write was refused because someone else ended the row (a
        # force-kill, the reaper, a newer attempt): the process must go all the same.
        log.warning("task.watchdog_kill", task_id=ex.id, attempt=ex.attempt, pid=self.pid,
                    grace=grace)
        await self._unregister(ex)
        os.kill(self.pid, signal.SIGKILL)

    # -- execution lifecycle ------------------------------------------------------------

    async def publish(self, kind: str, ex: Execution, **fields: Any) -> None:
        assert self.redis is not None
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
        tasks = [self.loop.create_task(self._monitor(ex))]
        if ex.time_limit:
            tasks.append(self.loop.create_task(self._time_limit(ex, ex.time_limit)))
        self._tasks[ex.id] = tasks

    def _stop(self, ex: Execution) -> None:
        ex.finished.set()
        for t in [*self._tasks.pop(ex.id, []), *self._tasks.pop(f"watchdog:{ex.id}", [])]:
            t.cancel()

    async def _release(self, ex: Execution) -> None:
        await self.forget(ex.id)
        await self._unregister(ex)
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
                await self._flush_pending(ex)
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
            await self._flush_pending(ex)
            db = await self.db()
            return await db.requeue_execution(ex.task_id, ex.attempt, message_id, eta, error)
        finally:
            await self._release(ex)

    async def _time_limit(self, ex: Execution, limit: float) -> None:
        await asyncio.sleep(limit)
        if ex.finished.is_set():
            return
        try:
            db = await self.db()
            await db.request_time_limit(ex.task_id, ex.attempt, self.settings.cancel_grace)
        except Exception as exc:
            log.warning("task.time_limit_db_error", task_id=ex.id, error=str(exc))
        self.trigger(ex, "time_limit", forced=False, via="time_limit")

    async def _monitor(self, ex: Execution) -> None:
        interval = min(self.settings.heartbeat_interval, self.settings.cancel_poll_interval)
        beats = HeartbeatLog(self.settings, ex)
        while not ex.finished.is_set():
            # Independent of each other: one server stalling must not stop the other's part.
            await asyncio.gather(self._register(ex), self._beat(ex))
            beats.maybe_log()
            await asyncio.sleep(interval)

    async def _beat(self, ex: Execution) -> None:
        p = ex.progress
        try:
            await self._flush_pending(ex)
            db = await self.db()
            row = await asyncio.wait_for(db.heartbeat(
                ex.task_id, ex.attempt, done=p.done, failed=p.failed, total=p.total,
                current=p.current, eta_seconds=p.eta_seconds(ex.elapsed(), ex.skipped)),
                DB_CALL_TIMEOUT)
            if row is None:
                state = await db.execution_state(ex.task_id)
                why = "superseded" if state and state["attempt"] != ex.attempt else "ended"
                self.trigger(ex, why, forced=False, via="poll")
            else:
                await self._publish_progress(ex)
            if row is not None and row["status"] == TaskStatus.CANCELLING:
                self.trigger(ex, row["cancel_reason"] or "cancelled",
                             forced=bool(row["cancel_forced"]), via="poll")
        except Exception as exc:
            # The task keeps running through a DB outage; the next beat retries.
            log.warning("task.heartbeat_failed", task_id=ex.id, error=str(exc))

    async def _publish_progress(self, ex: Execution) -> None:
        p = ex.progress
        now = (p.done, p.failed, p.total, p.current)
        if now != self._published.get(ex.id):
            self._published = {ex.id: now}
            await self.publish("task.progress", ex,
                               eta_seconds=p.eta_seconds(ex.elapsed(), ex.skipped))

    # -- checkpoints --------------------------------------------------------------------

    async def save_result(self, ex: Execution, chunk: int, ok: bool, result: Any) -> bool:
        """Writes one chunk's result; during a DB outage it is kept and written later.

        A result the DB refuses for what it is (not JSON-serialisable, say) raises into
        the task: it is the task's bug, and buffering it would block every later write."""
        try:
            await self._flush_pending(ex)
            db = await self.db()
            return await asyncio.wait_for(
                db.save_result(ex.task_id, ex.attempt, chunk, ok, result), DB_CALL_TIMEOUT)
        except UNREACHABLE as exc:
            log.warning("task.checkpoint_buffered", task_id=ex.id, chunk=chunk, error=repr(exc))
            ex.pending.append((chunk, ok, result))
            return True

    async def _flush_pending(self, ex: Execution) -> None:
        if not ex.pending:
            return
        assert self._flush_lock is not None
        async with self._flush_lock:
            db = await self.db()
            while ex.pending:
                chunk, ok, result = ex.pending[0]
                await asyncio.wait_for(
                    db.save_result(ex.task_id, ex.attempt, chunk, ok, result), DB_CALL_TIMEOUT)
                ex.pending.pop(0)

    # -- the execution registry: what runs where, without a broadcast ----------------------

    async def _register(self, ex: Execution) -> None:
        assert self.redis is not None
        info = {"task_id": ex.id, "attempt": ex.attempt, "message_id": str(ex.message_id),
                "node": self.node, "host": self.settings.hostname, "pid": self.pid,
                "pid_started": self.pid_started, "started_at": ex.started_at}
        try:
            await refresh(self.redis, self.keys, info, self.settings.heartbeat_timeout)
        except Exception as exc:
            log.warning("worker.registry_failed", task_id=ex.id, error=str(exc))

    async def _unregister(self, ex: Execution) -> None:
        assert self.redis is not None
        try:
            await unregister(self.redis, self.keys, ex.id, ex.attempt)
        except Exception as exc:
            log.warning("worker.registry_failed", task_id=ex.id, error=str(exc))

    async def taken(self, task_id: str, message_id: str) -> bool:
        """A delivery arrived: listen for its task's cancels and say whether it was
        cancelled (the fast path; the claim still decides)."""
        assert self.redis is not None
        await self.watch(task_id)
        try:
            score = await self.redis.zscore(self.keys.cancelled, message_id)
        except Exception:
            return False  # the DB claim still decides
        if score is not None:
            self.settled(message_id)
            await self.forget(task_id)
        return score is not None

    def settled(self, message_id: str) -> None:
        """The message has had its answer (claimed, or refused for good): strike it off the
        set of published, untaken messages. Off the task's path; a failure only leaves an
        entry the lost-message rule never asks about."""
        assert self.redis is not None
        task = self.loop.create_task(self.redis.zrem(self.keys.pending, message_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
