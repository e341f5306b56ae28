"""The guardian: deadlines of this worker's pool processes, enforced by its main process.

A pool process stuck in C code that holds its GIL cannot run its own watchdog, and the
reaper can only act from afar after a margin. The worker's main process is never blocked
by a child: it learns of cancels and pauses (the event, then the DB's deadline) and, when a deadline
passes with the execution still there, records the kill and SIGKILLs exactly that child,
the one Celery itself says runs that message.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Any

import structlog
from celery import Celery

from services.worker.control import find_request, verify_target
from services.worker.db_connection import OneConnection
from services.worker.loop_thread import LoopThread
from services.worker.subscription import Subscription
from shared.broker import make_celery
from shared.db import Db
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
        self.thread.spawn(self.subscription.run())
        self.thread.spawn(self._poll())

    async def db(self) -> Db:
        return await self.connection.get()

    def _celery(self) -> Celery:
        # Only for a pause resumed while it stopped, so made on first use.
        if self._celery_app is None:
            self._celery_app = make_celery(self.settings)
        return self._celery_app

    async def _poll(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.cancel_poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._arm()
            except Exception as exc:
                log.warning("worker.guardian_poll_error", error=str(exc))
                await asyncio.sleep(0.5)

    async def _arm(self) -> None:
        active = active_task_ids()
        if not active:
            return
        rows = await (await self.db()).cancelling_among(list(active))
        for row in rows:
            key = (row["id"], row["attempt"])
            if key in self._armed or active.get(row["id"]) != str(row["message_id"]):
                continue
            delay = max(0.0, float(row["due_in"])) + GRACE_AFTER_DEADLINE
            self._armed[key] = self.loop.call_later(delay, self._start_enforcing, row)

    def _start_enforcing(self, row: Any) -> None:
        self.thread.spawn(self._enforce(row))

    async def _enforce(self, row: Any) -> None:
        key = (row["id"], row["attempt"])
        try:
            message_id, task_id = str(row["message_id"]), str(row["id"])
            proc, why = verify_target(message_id, task_id, None, None)
            if proc is None:
                return  # it ended (or its own watchdog ended it) in time
            # `cancelled`, `paused` for a pause, or `queued` for a pause resumed meanwhile.
            db = await self.db()
            ended = await db.record_kill(row["id"], row["attempt"])
            # Check again right before the signal: the pid must still run that message.
            if find_request(message_id, task_id) is None:
                return
            os.kill(proc.pid, signal.SIGKILL)
            if ended == TaskStatus.QUEUED:  # its fresh message, once the process is gone
                await send_requeued(db, self._celery(), row["id"])
            late = time.time() - row["cancel_deadline"].timestamp()
            log.warning("worker.guardian_killed", task_id=task_id, attempt=row["attempt"],
                        status=ended, pid=proc.pid, after_deadline_s=round(late, 3))
        except ProcessLookupError:
            pass
        except Exception as exc:
            log.warning("worker.guardian_enforce_error", task_id=str(row["id"]), error=str(exc))
        finally:
            self._armed.pop(key, None)
