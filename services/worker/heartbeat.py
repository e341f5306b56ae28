"""The running execution's heartbeat: the fenced DB write that also polls for cancels and
records what the pool process uses (RSS, CPU), its registry entry kept fresh, progress
events, and log lines in the original guide's style at an interval chosen by job size.
The resource guard's memory limit is watched for as long as the heartbeat runs."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from services.worker.db_connection import DB_CALL_TIMEOUT
from services.worker.execution import Execution
from services.worker.resource_guard import ResourceGuard, limits
from shared.settings import Settings
from shared.states import STOPPING

if TYPE_CHECKING:
    from services.worker.sidecar import Sidecar

log = structlog.get_logger("worker.heartbeat")
sidecar_log = structlog.get_logger("worker.sidecar")


def log_interval(total: int | None, settings: Settings) -> float:
    """Bigger jobs log less often; HEARTBEAT_LOG_INTERVAL overrides."""
    if settings.heartbeat_log_interval > 0:
        return settings.heartbeat_log_interval
    if total is not None and total > 500:
        return 900.0
    if total is not None and total > 100:
        return 600.0
    return 300.0


def human(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}min"
    return f"{seconds:.0f}s"


class HeartbeatLog:
    def __init__(self, settings: Settings, ex: Execution) -> None:
        self.settings = settings
        self.ex = ex
        self.last = time.monotonic()

    def maybe_log(self) -> None:
        p = self.ex.progress
        if time.monotonic() - self.last < log_interval(p.total, self.settings):
            return
        self.last = time.monotonic()
        elapsed = self.ex.elapsed()
        eta = p.eta_seconds(elapsed, self.ex.skipped)
        percent = p.percent()
        chunk = f"{p.current if p.current is not None else '-'}/{p.total or '?'}"
        log.info("task.heartbeat", task_id=self.ex.id, attempt=self.ex.attempt,
                 elapsed_s=round(elapsed, 1), percent=percent, eta_s=eta, done=p.done,
                 failed=p.failed, total=p.total, chunk=p.current,
                 summary=(f"💓 heartbeat - running: {human(elapsed)}, progress: "
                          f"{percent if percent is not None else '?'}%, remaining: {human(eta)} | "
                          f"📊 succeeded={p.done}, failed={p.failed}, chunk={chunk}"))


class Heartbeat:
    """Beats for the sidecar's current execution until it finishes."""

    def __init__(self, sc: Sidecar) -> None:
        self._sc = sc
        self.guard = ResourceGuard(sc.pid)
        # The progress last published, so that an unchanged one is not sent again.
        self._published: dict[str, tuple[Any, ...]] = {}

    async def run(self, ex: Execution) -> None:
        limit = limits().for_actor(ex.actor)
        if limit is None:
            await self._beats(ex)
            return
        sc = self._sc
        # One task for both: cancelling the heartbeat (the execution ended) ends the guard.
        await asyncio.gather(self._beats(ex), self.guard.enforce(
            ex, limit, connection=sc.connection, cancel_grace=sc.settings.cancel_grace,
            trigger=sc.trigger))

    async def _beats(self, ex: Execution) -> None:
        settings = self._sc.settings
        interval = min(settings.heartbeat_interval, settings.cancel_poll_interval)
        beats = HeartbeatLog(settings, ex)
        while not ex.finished.is_set():
            # Independent of each other: one server stalling must not stop the other's part.
            await asyncio.gather(self._sc.registry.refresh(ex), self.beat(ex))
            beats.maybe_log()
            await asyncio.sleep(interval)

    async def beat(self, ex: Execution) -> None:
        """Writes progress (fenced by attempt) and reads back whether to stop."""
        sc, p = self._sc, ex.progress
        try:
            await sc.checkpoints.flush(ex)
            db = await sc.db()
            use = self.guard.usage()
            row = await asyncio.wait_for(db.heartbeat(
                ex.task_id, ex.attempt, done=p.done, failed=p.failed, total=p.total,
                current=p.current, eta_seconds=p.eta_seconds(ex.elapsed(), ex.skipped),
                rss_bytes=use.rss_bytes, cpu_percent=use.cpu_percent), DB_CALL_TIMEOUT)
            if row is None:
                state = await db.execution_state(ex.task_id)
                why = "superseded" if state and state["attempt"] != ex.attempt else "ended"
                sc.trigger(ex, why, forced=False, via="poll")
            else:
                await self._publish_progress(ex)
            # Cancelling or pausing: the row's reason for a pause reads `pause`.
            if row is not None and row["status"] in STOPPING:
                sc.trigger(ex, row["cancel_reason"] or "cancelled",
                           forced=bool(row["cancel_forced"]), via="poll")
        except Exception as exc:
            # The task keeps running through a DB outage; the next beat retries.
            sidecar_log.warning("task.heartbeat_failed", task_id=ex.id, error=str(exc))

    async def _publish_progress(self, ex: Execution) -> None:
        p = ex.progress
        now = (p.done, p.failed, p.total, p.current)
        if now != self._published.get(ex.id):
            self._published = {ex.id: now}
            await self._sc.publish("task.progress", ex,
                                   eta_seconds=p.eta_seconds(ex.elapsed(), ex.skipped))
