"""Runs one Celery delivery of an actor: guard, claim, execute, record the end.

The order is what makes the invariants hold: nothing of the actor runs before the
atomic claim succeeded (cancelled, stale and duplicate deliveries stop here), and
the end is written with the attempt as fencing token.
"""

from __future__ import annotations

import os
import signal
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from celery import Celery

from services.worker.actor import Actor
from services.worker.context import TaskContext
from services.worker.execution import Execution
from services.worker.sidecar import END_RETRY_SECONDS, INTERRUPT_SIGNAL, Sidecar
from shared.db import ClaimBusy
from shared.settings import Settings
from shared.states import Outcome, TaskStatus
from shared.token import Cancelled

log = structlog.get_logger("worker.runtime")


class RetryLater(Exception):
    """The DB could not be reached to claim: the message is retried, nothing ran."""


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
        tid, mid = uuid.UUID(task_id), uuid.UUID(message_id)
        if sc.call(sc.taken(task_id, message_id)):
            log.info("task.dropped", task_id=task_id, message_id=message_id, why="cancelled")
            return "skipped"
        claim, saved = self._claim_or_retry(sc, tid, mid)
        if claim is None:
            log.info("task.dropped", task_id=task_id, message_id=message_id,
                     why="not claimable (cancelled, finished, stale or already running)")
            return "skipped"
        ex = Execution(task_id=tid, message_id=mid, actor=act.name, queue=claim["queue"],
                       attempt=claim["attempt"], started_at=claim["started_at"].timestamp(),
                       kwargs=dict(claim["kwargs"]), interruptible=act.interruptible,
                       time_limit=act.time_limit)
        log.info("task.started", task_id=ex.id, attempt=ex.attempt, actor=act.name,
                 pid=os.getpid(), restored_chunks=len(saved))
        sc.call(sc.begin(ex))
        status, outcome, error = self._run(act, TaskContext(sc, ex, saved), ex)
        if ex.token.cancelled and status is TaskStatus.FAILED:
            # It failed while being cancelled: what was asked for happened, and a retry
            # would bring cancelled work back.
            status, outcome = TaskStatus.CANCELLED, Outcome.COOPERATIVE
        if (status is TaskStatus.FAILED and ex.attempt <= act.max_retries
                and sc.call(self._retry(sc, act, ex, error))):
            return "retrying"
        ended = sc.call(sc.end(ex, status, outcome=outcome, error=error),
                        timeout=END_RETRY_SECONDS + 30)
        if ended is None and status is TaskStatus.CANCELLED:
            ended = sc.call(self._settle_refused_cancel(sc, act, ex))
        log.info("task.finished", task_id=ex.id, attempt=ex.attempt, status=ended or "fenced",
                 wanted=str(status), outcome=outcome, done=ex.progress.done,
                 failed=ex.progress.failed, elapsed_s=round(ex.elapsed(), 3))
        return str(ended or "fenced")

    def _claim_or_retry(self, sc: Sidecar, tid: uuid.UUID, mid: uuid.UUID
                        ) -> tuple[Any, set[int]]:
        """The claim, bounded: the DB refuses it past its deadline, and if even the answer
        never comes, a claim that committed unseen is undone before the delivery is retried
        (else the row would stay `running` with nothing behind it)."""
        deadline = self.settings.claim_timeout
        try:
            result: tuple[Any, set[int]] = sc.call(self._claim(sc, tid, mid, deadline),
                                                   timeout=deadline + 10.0)
            return result
        except ClaimBusy as exc:
            log.info("task.claim_busy", task_id=str(tid), message_id=str(mid))
            raise RetryLater(str(exc)) from exc
        except Exception as exc:
            log.warning("task.claim_failed", task_id=str(tid), error=repr(exc))
            try:
                undone = sc.call(self._unclaim(sc, tid, mid), timeout=deadline + 10.0)
                if undone is not None:
                    log.warning("task.claim_undone", task_id=str(tid), attempt=undone)
            except Exception as again:
                log.warning("task.unclaim_failed", task_id=str(tid), error=repr(again))
            raise RetryLater(str(exc)) from exc

    async def _claim(self, sc: Sidecar, tid: uuid.UUID, mid: uuid.UUID, deadline: float
                     ) -> tuple[Any, set[int]]:
        db = await sc.db()
        claim = await db.claim_task(tid, mid, self.node, os.getpid(),
                                    self.settings.heartbeat_timeout, deadline)
        sc.settled(str(mid))
        if claim is None:
            await sc.forget(str(tid))
            return None, set()
        return claim, await db.saved_chunks(tid)

    async def _unclaim(self, sc: Sidecar, tid: uuid.UUID, mid: uuid.UUID) -> int | None:
        await sc.forget(str(tid))
        db = await sc.db()
        return await db.unclaim_task(tid, mid, self.node, os.getpid())

    def _run(self, act: Actor, ctx: TaskContext, ex: Execution
             ) -> tuple[TaskStatus, str | None, str | None]:
        try:
            ex.in_user_code = True
            try:
                act.fn(ctx, **ex.kwargs)
            finally:
                ex.in_user_code = False
            return TaskStatus.SUCCEEDED, None, None
        except Cancelled as c:
            return TaskStatus.CANCELLED, Outcome.COOPERATIVE, c.reason
        except Exception as exc:
            log.error("task.error", task_id=ex.id, attempt=ex.attempt,
                      error=repr(exc), traceback=traceback.format_exc(limit=20))
            return TaskStatus.FAILED, Outcome.ERROR, repr(exc)[:2000]

    async def _settle_refused_cancel(self, sc: Sidecar, act: Actor, ex: Execution
                                     ) -> str | None:
        """The task stopped for a cancel, but the row was not `cancelling`.

        A time limit whose DB write failed is recorded now. Any other cancel the DB never
        recorded (an event racing a cancel-all's transaction) is undone: a new attempt
        goes on from the checkpoint, rather than the row staying `running` with nothing
        behind it. A row someone else ended or took over is left alone."""
        from shared.submit import publish

        db = await sc.db()
        if ex.token.reason == "time_limit":
            await db.request_time_limit(ex.task_id, ex.attempt, 0.0)
            return await db.finish_task(ex.task_id, ex.attempt, TaskStatus.CANCELLED,
                                        outcome=Outcome.COOPERATIVE, done=ex.progress.done,
                                        failed=ex.progress.failed, total=ex.progress.total)
        new_message = uuid.uuid4()
        row = await db.requeue_execution(ex.task_id, ex.attempt, new_message, None,
                                         "stopped by a cancel the database never recorded")
        if row is None:
            return None
        await publish(self.celery, act.name, ex.task_id, new_message, row["queue"],
                      queued_at=row["queued_at"])
        log.warning("task.stray_cancel_undone", task_id=ex.id, attempt=ex.attempt)
        return "requeued"

    async def _retry(self, sc: Sidecar, act: Actor, ex: Execution, error: str | None) -> bool:
        from shared.submit import publish

        new_message = uuid.uuid4()
        eta = datetime.now(UTC) + timedelta(seconds=min(60.0, 2.0 ** ex.attempt))
        row = await sc.requeue(ex, new_message, eta, error)
        if row is None:
            return False
        await publish(self.celery, act.name, ex.task_id, new_message, row["queue"], eta,
                      queued_at=row["queued_at"])
        log.info("task.retry_scheduled", task_id=ex.id, attempt=ex.attempt, eta=eta.isoformat())
        return True
