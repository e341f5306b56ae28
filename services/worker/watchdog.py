"""The in-process watchdog: a cancelled execution that outlives its grace period ends
its pool process. It knows exactly which task this process runs, so no wrong-process
race; a task stuck holding the GIL stops it too, and the guardian takes over then."""

from __future__ import annotations

import asyncio
import os
import signal

import structlog

from services.worker.db_connection import OneConnection
from services.worker.execution import Execution
from services.worker.registry_entry import RegistryEntry

log = structlog.get_logger("worker.sidecar")


class Watchdog:
    def __init__(self, loop: asyncio.AbstractEventLoop, connection: OneConnection,
                 registry: RegistryEntry, pid: int) -> None:
        self._loop = loop
        self._connection = connection
        self._registry = registry
        self._pid = pid
        self._armed: dict[str, asyncio.Task[None]] = {}

    def arm(self, ex: Execution, grace: float) -> None:
        """(Re)starts the countdown: a forced cancel after a plain one shortens it."""
        self.disarm(ex)
        self._armed[ex.id] = self._loop.create_task(self._expire(ex, grace))

    def disarm(self, ex: Execution) -> None:
        old = self._armed.pop(ex.id, None)
        if old is not None:
            old.cancel()

    async def _expire(self, ex: Execution, grace: float) -> None:
        await asyncio.sleep(grace)
        if ex.finished.is_set():
            return
        try:
            db = await self._connection.get()
            # `cancelled`, or `paused` for a pause: the stop it was asked for.
            ended = await asyncio.wait_for(db.record_kill(
                ex.task_id, ex.attempt, done=ex.progress.done, failed=ex.progress.failed), 2.0)
        except Exception as exc:
            log.warning("task.watchdog_db_error", task_id=ex.id, error=str(exc))
            ended = "unknown"
        if ended is None and ex.finished.is_set():
            return  # the task recorded its own end first
        # Otherwise the write was refused because someone else ended the row (a
        # force-kill, the reaper, a newer attempt): the process must go all the same.
        log.warning("task.watchdog_kill", task_id=ex.id, attempt=ex.attempt, pid=self._pid,
                    grace=grace)
        await self._registry.remove(ex)
        os.kill(self._pid, signal.SIGKILL)
