"""Runs one Celery delivery of an actor: guard, claim, execute, record the end.

This is the task's side (the pool process's main thread): it runs the actor's code.
Everything else happens on the sidecar's loop, reached twice per execution plus once
per checkpoint (services/worker/lifecycle.py says what the two crossings do).
"""

from __future__ import annotations

import signal
import traceback
import uuid
from typing import Any

import structlog
from celery import Celery

from services.worker.actor import Actor
from services.worker.context import TaskContext
from services.worker.execution import Execution
from services.worker.lifecycle import (
    CLOSING_TIMEOUT,
    RETRYING,
    close_execution,
    open_execution,
    opening_timeout,
)
from services.worker.sidecar import INTERRUPT_SIGNAL, Sidecar
from shared.settings import Settings
from shared.states import Outcome, TaskStatus
from shared.token import Cancelled

log = structlog.get_logger("worker.runtime")


class Runtime:
    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self.node = settings.hostname
        self.sidecar: Sidecar | None = None

    # -- per pool process -----------------------------------------------------------------

    def start_process(self) -> None:
        """Runs in each pool process right after the fork."""
        self.sidecar = Sidecar(self.settings, self.node)
        self.sidecar.start()
        signal.signal(INTERRUPT_SIGNAL, self._on_interrupt)

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        sc = self.sidecar
        ex = sc.current if sc else None
        if ex is not None and ex.in_user_code and ex.token.cancelled:
            ex.in_user_code = False  # raise once; cleanup code must not be interrupted
            raise Cancelled(ex.token.reason or "cancelled")

    # -- one delivery ---------------------------------------------------------------------

    def execute(self, act: Actor, task_id: str, message_id: str) -> str:
        """Returns what happened, for Celery's log: skipped, succeeded, failed, cancelled."""
        sc = self.sidecar
        assert sc is not None, "start_process() was not called in this pool process"
        deadline = self.settings.claim_timeout
        opened = sc.call(open_execution(sc, act, uuid.UUID(task_id), uuid.UUID(message_id),
                                        deadline), timeout=opening_timeout(deadline))
        if opened is None:
            return "skipped"
        ex, saved = opened
        status, outcome, error = self._run(act, TaskContext(sc, ex, saved, self.celery), ex)
        if ex.token.cancelled and status is TaskStatus.FAILED:
            # It failed while being cancelled: what was asked for happened, and a retry
            # would bring cancelled work back.
            status, outcome = TaskStatus.CANCELLED, Outcome.COOPERATIVE
        ended = sc.call(close_execution(sc, self.celery, act, ex, status, outcome, error),
                        timeout=CLOSING_TIMEOUT)
        if ended == RETRYING:
            return RETRYING
        log.info("task.finished", task_id=ex.id, attempt=ex.attempt, status=ended or "fenced",
                 wanted=str(status), outcome=outcome, done=ex.progress.done,
                 failed=ex.progress.failed, elapsed_s=round(ex.elapsed(), 3))
        return str(ended or "fenced")

    def _run(self, act: Actor, ctx: TaskContext, ex: Execution
             ) -> tuple[TaskStatus, str | None, str | None]:
        try:
            ex.in_user_code = True
            # A parent whose children all ended runs its `on_children_done` step instead.
            step = act.on_children_done if ex.children_done and act.on_children_done else act.fn
            try:
                step(ctx, **ex.kwargs)
            finally:
                ex.in_user_code = False
            return TaskStatus.SUCCEEDED, None, None
        except Cancelled as c:
            return TaskStatus.CANCELLED, Outcome.COOPERATIVE, c.reason
        except Exception as exc:
            log.error("task.error", task_id=ex.id, attempt=ex.attempt,
                      error=repr(exc), traceback=traceback.format_exc(limit=20))
            return TaskStatus.FAILED, Outcome.ERROR, repr(exc)[:2000]
