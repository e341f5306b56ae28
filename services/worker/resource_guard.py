"""The resource guard: what an execution's pool process uses, and its memory limit.

It runs on the sidecar's loop, beside the heartbeat, so a task busy in its own code is
measured all the same. Reading this process's RSS and CPU time is a few reads of /proc,
cheap enough to sample a few times a second: a task that allocates fast is caught well
before the kernel's OOM killer, which would take the pool process (and, with cgroups, the
whole worker) without a checkpoint or a word in the DB.

Past the limit the execution is cancelled through the ladder like a time limit: the row
goes `cancelling` with reason `memory_limit`, the token is set, a cooperative task saves
and exits, an uncooperative one is killed by the watchdog after the grace period. One
that keeps growing far past the limit meanwhile is not given the whole grace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil
import structlog

from services.worker.cancel_listener import Trigger
from services.worker.db_connection import DB_CALL_TIMEOUT, OneConnection
from services.worker.execution import Execution
from shared.settings import Settings
from shared.sizes import parse_size
from shared.states import CancelReason

log = structlog.get_logger("worker.sidecar")

# How often RSS is read while an execution with a limit runs.
SAMPLE_INTERVAL = 0.1
# Growing this far past the limit during the grace period turns the cancel into a forced one.
HARD_FACTOR = 1.25


@dataclass(frozen=True)
class Usage:
    rss_bytes: int | None
    # Since the previous reading; 100 is one core busy.
    cpu_percent: float | None


class MemoryLimits:
    """Each actor's memory limit, else the worker's default (WORKER_MEMORY_LIMIT)."""

    def __init__(self, by_actor: dict[str, int | None] | None = None,
                 default: int | None = None) -> None:
        self._by_actor = dict(by_actor or {})
        self.default = default

    @classmethod
    def of(cls, actors: Iterable[Any], settings: Settings) -> MemoryLimits:
        return cls({a.name: a.memory_limit for a in actors},
                   parse_size(settings.worker_memory_limit))

    def for_actor(self, name: str) -> int | None:
        own = self._by_actor.get(name)
        return own if own is not None else self.default


_limits = MemoryLimits()


def configure_limits(limits: MemoryLimits) -> None:
    """Called in the worker's main process before the pool forks, so every pool process
    starts with the table (an execution names its actor, not the actor's options)."""
    global _limits
    _limits = limits


def limits() -> MemoryLimits:
    return _limits


class ResourceGuard:
    """Measures one pool process (this one) and enforces its executions' memory limits."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self._proc.cpu_percent(None)  # the first reading only sets the starting point

    def rss(self) -> int | None:
        try:
            return int(self._proc.memory_info().rss)
        except psutil.Error:
            return None

    def usage(self) -> Usage:
        """RSS now, and CPU since the previous call (the heartbeat calls it once a beat)."""
        try:
            with self._proc.oneshot():
                return Usage(int(self._proc.memory_info().rss),
                             round(float(self._proc.cpu_percent(None)), 1))
        except psutil.Error:
            return Usage(None, None)

    async def enforce(self, ex: Execution, limit: int, *, connection: OneConnection,
                      cancel_grace: float, trigger: Trigger) -> None:
        """Until the execution ends: past `limit`, the cancel; far past it, a forced one."""
        while not ex.finished.is_set():
            rss = self.rss()
            if rss is not None and rss > limit:
                if not ex.token.cancelled:
                    await self._cancel(ex, rss, limit, connection, cancel_grace, trigger)
                elif rss > limit * HARD_FACTOR and ex.token.reason == CancelReason.MEMORY_LIMIT:
                    log.warning("task.memory_limit_forced", task_id=ex.id, attempt=ex.attempt,
                                rss_bytes=rss, limit_bytes=limit)
                    trigger(ex, CancelReason.MEMORY_LIMIT, forced=True, via="memory_limit")
                    return
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def _cancel(self, ex: Execution, rss: int, limit: int, connection: OneConnection,
                      cancel_grace: float, trigger: Trigger) -> None:
        log.warning("task.memory_limit", task_id=ex.id, attempt=ex.attempt, rss_bytes=rss,
                    limit_bytes=limit)
        try:
            # The row says `cancelling` with its deadline and why, as for a cancel from outside.
            db = await connection.get()
            await asyncio.wait_for(db.request_memory_limit(ex.task_id, ex.attempt, cancel_grace),
                                   DB_CALL_TIMEOUT)
        except Exception as exc:
            # The process must not outgrow its limit for want of a DB write: stop it anyway.
            log.warning("task.memory_limit_db_error", task_id=ex.id, error=str(exc))
        trigger(ex, CancelReason.MEMORY_LIMIT, forced=False, via="memory_limit")
