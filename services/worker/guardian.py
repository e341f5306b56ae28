"""The guardian: the worker's main process's watch over its pool processes' executions.

It writes the heartbeats of every pool process in one statement a beat (they report them
over services/worker/beat_link.py) and answers each process with what its row says, which
is also their fallback poll for cancels and pauses whose event was lost. The same statement
reads the state of every execution the pool runs, beating or not, and that is how the
guardian learns of stop deadlines (the event wakes it at once; the beat covers a lost one).

A pool process stuck in C code that holds its GIL cannot run its own watchdog, and the
reaper can only act from afar after a margin. The worker's main process is never blocked
by a child: when a deadline passes with the execution still there, it records the kill and
SIGKILLs exactly that child, the one Celery itself says runs that message.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import time
import uuid

import structlog
from celery import Celery

from services.worker.beat_link import Answer, Heard, NodeLink
from services.worker.control import find_request, verify_target
from services.worker.db_connection import DB_CALL_TIMEOUT, OneConnection
from services.worker.heartbeat import beat_interval
from services.worker.loop_thread import LoopThread
from services.worker.subscription import Subscription
from shared.broker import make_celery
from shared.db import Db
from shared.db.beats import Beat, BeatState
from shared.keys import Keys
from shared.pausing import send_requeued
from shared.redis_client import connect
from shared.settings import Settings
from shared.states import TaskStatus

log = structlog.get_logger("worker.guardian")

# The child's own watchdog goes first; this is for when it cannot.
GRACE_AFTER_DEADLINE = 0.05


def active_task_ids() -> dict[uuid.UUID, str]:
    """task id -> message id of every execution this worker's pool runs now."""
    from celery.worker import state as worker_state

    for _ in range(5):  # the consumer thread may change the set while we copy it
        try:
            requests = list(worker_state.active_requests)
            break
        except RuntimeError:
            continue
    else:
        return {}
    out: dict[uuid.UUID, str] = {}
    for req in requests:
        try:
            out[uuid.UUID(str((req.kwargs or {}).get("task_id")))] = req.id
        except ValueError:
            continue
    return out


class Guardian:
    def __init__(self, settings: Settings, node: str) -> None:
        self.settings = settings
        self.node = node
        self.keys = Keys(settings.key_prefix)
        self.thread = LoopThread("taskreaper-guardian")
        self.loop = self.thread.loop
        self.connection = OneConnection(settings.database_url)
        self.link = NodeLink(node)
        self._pid = os.getpid()
        self._armed: dict[tuple[uuid.UUID, int], asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        self._celery_app: Celery | None = None
        # A cancel event only says "look now": the deadlines come from the DB. Cancel-alls,
        # and single cancels of tasks on this worker only.
        self.subscription = Subscription(
            connect(settings.redis_url, socket_timeout=None),
            [self.keys.cancel_channel, self.keys.node_cancel_channel(node)],
            lambda _: self._wake.set(), log=log, error_event="worker.guardian_listen_error")

    def start(self) -> None:
        self.thread.start(self._loops)

    def _loops(self) -> None:
        if self.link.open(self.loop):
            atexit.register(self._exit)
        self.thread.spawn(self.subscription.run())
        self.thread.spawn(self._beats())

    def _exit(self) -> None:
        # Pool processes forked later inherit the registration; only this process owns it.
        if os.getpid() == self._pid:
            self.link.remove()

    async def db(self) -> Db:
        return await self.connection.get()

    def _celery(self) -> Celery:
        # Only for a pause resumed while it stopped, so made on first use.
        if self._celery_app is None:
            self._celery_app = make_celery(self.settings)
        return self._celery_app

    async def _beats(self) -> None:
        every = beat_interval(self.settings)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), every)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.beat(within=3 * every)
            except Exception as exc:
                log.warning("worker.guardian_beat_error", error=str(exc))
                await asyncio.sleep(0.5)

    async def beat(self, within: float) -> None:
        """One statement for the whole pool: the beats its processes reported in the last
        `within` seconds written, every execution's state read back, each process answered,
        the deadlines of those being stopped armed."""
        active = active_task_ids()
        reports = self.link.reports(within)
        if not active and not reports:
            return
        beats: dict[uuid.UUID, Beat] = {}
        for _, b in reports:
            if b.task_id not in beats or b.attempt > beats[b.task_id].attempt:
                beats[b.task_id] = b
        try:
            states = await asyncio.wait_for(
                self._write(list(beats.values()), [t for t in active if t not in beats]),
                DB_CALL_TIMEOUT)
        except Exception:
            for pid, b in reports:
                self.link.answer(pid, Answer(str(b.task_id), b.attempt, Heard.FAILED))
            raise
        found = {s.id: s for s in states}
        for pid, b in reports:
            self.link.answer(pid, Answer.to(b, found.get(b.task_id)))
        self._arm([s for s in states if s.stopping], active)

    async def _write(self, beats: list[Beat], watched: list[uuid.UUID]) -> list[BeatState]:
        return await (await self.db()).node_heartbeat(beats, watched)

    def _arm(self, stopping: list[BeatState], active: dict[uuid.UUID, str]) -> None:
        for state in stopping:
            key = (state.id, state.attempt)
            if (key in self._armed or state.due_in is None
                    or active.get(state.id) != str(state.message_id)):
                continue
            delay = max(0.0, float(state.due_in)) + GRACE_AFTER_DEADLINE
            self._armed[key] = self.loop.call_later(delay, self._start_enforcing, state)

    def _start_enforcing(self, state: BeatState) -> None:
        self.thread.spawn(self._enforce(state))

    async def _enforce(self, state: BeatState) -> None:
        key = (state.id, state.attempt)
        try:
            message_id, task_id = str(state.message_id), str(state.id)
            proc, why = verify_target(message_id, task_id, None, None)
            if proc is None:
                return  # it ended (or its own watchdog ended it) in time
            # `cancelled`, `paused` for a pause, or `queued` for a pause resumed meanwhile.
            db = await self.db()
            ended = await db.record_kill(state.id, state.attempt)
            if ended is None:
                # The row is no longer stopping at this attempt: the execution recorded its
                # own end (this process's view of Celery's requests can lag behind it), or
                # another writer settled it. Nothing of this attempt is left to kill here.
                log.info("worker.guardian_kill_skipped", task_id=task_id, attempt=state.attempt,
                         why="the attempt already ended")
                return
            # Check again right before the signal: the pid must still run that message.
            if find_request(message_id, task_id) is None:
                return
            os.kill(proc.pid, signal.SIGKILL)
            if ended == TaskStatus.QUEUED:  # its fresh message, once the process is gone
                await send_requeued(db, self._celery(), state.id)
            deadline = state.cancel_deadline
            late = time.time() - deadline.timestamp() if deadline is not None else None
            log.warning("worker.guardian_killed", task_id=task_id, attempt=state.attempt,
                        status=ended, pid=proc.pid,
                        after_deadline_s=round(late, 3) if late is not None else None)
        except ProcessLookupError:
            pass
        except Exception as exc:
            log.warning("worker.guardian_enforce_error", task_id=str(state.id), error=str(exc))
        finally:
            self._armed.pop(key, None)
