"""Heartbeat log lines in the original guide's style, at an interval chosen by job size."""

from __future__ import annotations

import time

import structlog

from services.worker.execution import Execution
from shared.settings import Settings

log = structlog.get_logger("worker.heartbeat")


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
