"""The running execution's heartbeat: progress and what the pool process uses (RSS, CPU),
fenced by attempt, read back as the fallback poll for cancels; its registry entry kept
fresh, progress events, and log lines in the original guide's style at an interval chosen
by job size. The resource guard's memory limit is watched for as long as the heartbeat runs.

Each beat goes to the worker's main process (services/worker/beat_link.py), which writes
the beats of all its pool processes in one statement and answers each with what its row
says. Where no main process takes the beats, or none answers for a while, the process
writes its own (`Db.heartbeat`), as every process did before: liveness never depends on
the main process alone."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from services.worker.beat_link import Answer, Heard, PoolLink
from services.worker.db_connection import DB_CALL_TIMEOUT
from services.worker.execution import Execution
from services.worker.resource_guard import ResourceGuard, limits
from shared.db.beats import Beat
from shared.pace import human, log_interval
from shared.settings import Settings
from shared.states import STOPPING

if TYPE_CHECKING:
    from services.worker.sidecar import Sidecar

log = structlog.get_logger("worker.heartbeat")
sidecar_log = structlog.get_logger("worker.sidecar")


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


# Reports to the main process per beat: whichever moment the main process writes, the
# report it has is at most half an interval old, so each of its beats moves the row's
# heartbeat on (a report costs no server anything).
REPORTS_PER_BEAT = 2


def beat_interval(settings: Settings) -> float:
    """How often a running execution beats: its progress is written and its row read back
    (the fallback poll for a cancel whose event was lost) once an interval."""
    return min(settings.heartbeat_interval, settings.cancel_poll_interval)


def takeover_after(settings: Settings) -> float:
    """How long a pool process waits for an answer of its main process before it writes its
    beats itself: past a slow statement, and well within the heartbeat timeout (but never
    less than two beats, which a main process answering on time needs at most)."""
    interval = beat_interval(settings)
    return min(2 * interval + DB_CALL_TIMEOUT, max(2 * interval, settings.heartbeat_timeout / 3))


class Heartbeat:
    """Beats for the sidecar's current execution until it finishes."""

    def __init__(self, sc: Sidecar) -> None:
        self._sc = sc
        self.guard = ResourceGuard(sc.pid)
        self.link = PoolLink(sc.node, self._answered)
        # When the main process last answered for the current execution (monotonic).
        self._heard_at = 0.0
        # The progress last published, so that an unchanged one is not sent again.
        self._published: dict[str, tuple[Any, ...]] = {}

    def start(self) -> None:
        """Opens the link to the main process (on the sidecar's loop thread)."""
        self.link.open(self._sc.loop)

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
        interval, patience = beat_interval(settings), takeover_after(settings)
        beats = HeartbeatLog(settings, ex)
        self._heard_at = time.monotonic()
        step = 0
        while not ex.finished.is_set():
            if step % REPORTS_PER_BEAT == 0:
                # Independent of each other: one server stalling must not stop the other's.
                await asyncio.gather(self._sc.registry.refresh(ex), self._report(ex, patience))
                beats.maybe_log()
            else:
                self.link.report(self.reading(ex))
            step += 1
            await asyncio.sleep(interval / REPORTS_PER_BEAT)

    async def _report(self, ex: Execution, patience: float) -> None:
        """Hands the beat to the main process, and writes it here as well when the main
        process does not take it or has not answered for `patience` seconds."""
        beat = self.reading(ex)
        if self.link.report(beat) and time.monotonic() - self._heard_at <= patience:
            await self._flush(ex)
            return
        await self.beat(ex, beat)

    def reading(self, ex: Execution) -> Beat:
        """The execution's progress and its process's use of memory and CPU, now."""
        p, use = ex.progress, self.guard.usage()
        return Beat(task_id=ex.task_id, attempt=ex.attempt, done=p.done, failed=p.failed,
                    total=p.total, current=p.current,
                    eta_seconds=p.eta_seconds(ex.elapsed(), ex.skipped),
                    rss_bytes=use.rss_bytes, cpu_percent=use.cpu_percent)

    async def _flush(self, ex: Execution) -> None:
        """Results kept through a DB outage are written without waiting for the next chunk."""
        try:
            await self._sc.checkpoints.flush(ex)
        except Exception as exc:
            sidecar_log.warning("task.checkpoint_flush_failed", task_id=ex.id, error=str(exc))

    async def beat(self, ex: Execution, beat: Beat | None = None) -> None:
        """Writes the beat over this process's own connection and reads back whether to stop."""
        sc = self._sc
        try:
            await sc.checkpoints.flush(ex)
            db = await sc.db()
            b = beat or self.reading(ex)
            row = await asyncio.wait_for(db.heartbeat(
                b.task_id, b.attempt, done=b.done, failed=b.failed, total=b.total,
                current=b.current, eta_seconds=b.eta_seconds, rss_bytes=b.rss_bytes,
                cpu_percent=b.cpu_percent), DB_CALL_TIMEOUT)
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

    def _answered(self, answer: Answer) -> None:
        """The main process's answer to a beat (on the sidecar's loop)."""
        sc = self._sc
        ex = sc.current
        if (ex is None or ex.finished.is_set() or answer.task_id != ex.id
                or answer.attempt != ex.attempt):
            return  # about an execution that has ended here meanwhile
        self._heard_at = time.monotonic()
        if answer.heard is Heard.WRITTEN:
            sc.thread.spawn(self._publish_progress(ex))
            if answer.status in STOPPING:
                sc.trigger(ex, answer.reason or "cancelled", forced=answer.forced, via="poll")
        elif answer.heard is Heard.GONE and not ex.token.cancelled:
            # This process's own statement tells a newer attempt from an end.
            sc.thread.spawn(self.beat(ex))

    async def _publish_progress(self, ex: Execution) -> None:
        p = ex.progress
        now = (p.done, p.failed, p.total, p.current)
        if now != self._published.get(ex.id):
            self._published = {ex.id: now}
            await self._sc.publish("task.progress", ex,
                                   eta_seconds=p.eta_seconds(ex.elapsed(), ex.skipped))
