"""An execution's two crossings from the task's thread to the sidecar loop.

Opening: the fast-path check (was the message cancelled before it was taken?), the
atomic claim in the DB, and the start of the execution's heartbeat, time limit and
registry entry. Closing: a retry, or its end recorded (fenced by attempt); a task its
token stopped ends as the stop says: `cancelled`, `paused` (a pause), back to `queued`
with a fresh message (a drain's `shutdown`: preempted), or a new attempt (a cancel the DB
never recorded). Each is one coroutine handed to the loop once: every hop makes the
task's thread wait for the loop thread's turn.

The order is what makes the invariants hold: nothing of the actor runs before the
claim succeeded (cancelled, stale and duplicate deliveries stop here).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from celery import Celery

from services.worker.actor import Actor
from services.worker.execution import Execution
from services.worker.sidecar import END_RETRY_SECONDS, Sidecar
from shared.db import ClaimBusy
from shared.pausing import Pauser, send_requeued
from shared.states import CancelReason, Outcome, TaskStatus
from shared.tree_control import TreeControl
from shared.trees import after_end

log = structlog.get_logger("worker.runtime")

# The bound of each step other than the claim and the end.
STEP_TIMEOUT = 15.0
# How much longer than its own deadline a claim (or its undoing) may take to answer.
CLAIM_MARGIN = 10.0
# For the task's thread, beyond the steps' own bounds: the loop's turn may be late.
CALL_MARGIN = 5.0
# What close_execution returns when the task goes to a new attempt.
RETRYING = "retrying"
# How often a stopped task's end is tried again when its row moved on under it (a cancel
# coming after the pause that stopped it, say).
SETTLE_TRIES = 3
CLOSING_TIMEOUT = 2 * STEP_TIMEOUT + END_RETRY_SECONDS + 30.0 + CALL_MARGIN


class RetryLater(Exception):
    """The DB could not be reached to claim: the message is retried, nothing ran."""


def opening_timeout(claim_timeout: float) -> float:
    return 2 * STEP_TIMEOUT + 2 * (claim_timeout + CLAIM_MARGIN) + CALL_MARGIN


# -- opening ------------------------------------------------------------------------------

async def open_execution(sc: Sidecar, act: Actor, tid: uuid.UUID, mid: uuid.UUID,
                         claim_timeout: float) -> tuple[Execution, set[int]] | None:
    """The execution and its saved chunks, or None when the delivery must not run."""
    task_id, message_id = str(tid), str(mid)
    if await asyncio.wait_for(_taken(sc, task_id, message_id), STEP_TIMEOUT):
        log.info("task.dropped", task_id=task_id, message_id=message_id, why="cancelled")
        return None
    claim, saved = await _claim_or_retry(sc, tid, mid, claim_timeout)
    if claim is None:
        log.info("task.dropped", task_id=task_id, message_id=message_id,
                 why="not claimable (cancelled, finished, stale or already running)")
        return None
    ex = Execution(task_id=tid, message_id=mid, actor=act.name, queue=claim.queue,
                   attempt=claim.attempt, started_at=claim.started_at.timestamp(),
                   kwargs=dict(claim.kwargs), interruptible=act.interruptible,
                   time_limit=act.time_limit, parent_id=claim.parent_id,
                   children_done=claim.children_done, children=claim.children)
    log.info("task.started", task_id=ex.id, attempt=ex.attempt, actor=act.name,
             pid=os.getpid(), restored_chunks=len(saved))
    await asyncio.wait_for(sc.begin(ex), STEP_TIMEOUT)
    return ex, saved


async def _taken(sc: Sidecar, task_id: str, message_id: str) -> bool:
    """A delivery arrived: listen for its task's cancels and say whether it was
    cancelled (the fast path; the claim still decides)."""
    await sc.watch(task_id)
    try:
        score = await sc.redis.zscore(sc.keys.cancelled, message_id)
    except Exception:
        return False  # the DB claim still decides
    if score is not None:
        _settled(sc, message_id)
        await sc.forget(task_id)
    return score is not None


def _settled(sc: Sidecar, message_id: str) -> None:
    """The message has had its answer (claimed, or refused for good): strike it off the
    set of published, untaken messages. Off the task's path; a failure only leaves an
    entry the lost-message rule never asks about."""
    sc.thread.spawn(sc.redis.zrem(sc.keys.pending, message_id))


async def _claim_or_retry(sc: Sidecar, tid: uuid.UUID, mid: uuid.UUID, deadline: float
                          ) -> tuple[Any, set[int]]:
    """The claim, bounded: the DB refuses it past its deadline, and if even the answer
    never comes, a claim that committed unseen is undone before the delivery is retried
    (else the row would stay `running` with nothing behind it)."""
    try:
        return await asyncio.wait_for(_claim(sc, tid, mid, deadline), deadline + CLAIM_MARGIN)
    except ClaimBusy as exc:
        log.info("task.claim_busy", task_id=str(tid), message_id=str(mid))
        raise RetryLater(str(exc)) from exc
    except Exception as exc:
        log.warning("task.claim_failed", task_id=str(tid), error=repr(exc))
        try:
            undone = await asyncio.wait_for(_unclaim(sc, tid, mid), deadline + CLAIM_MARGIN)
            if undone is not None:
                log.warning("task.claim_undone", task_id=str(tid), attempt=undone)
        except Exception as again:
            log.warning("task.unclaim_failed", task_id=str(tid), error=repr(again))
        raise RetryLater(str(exc)) from exc


async def _claim(sc: Sidecar, tid: uuid.UUID, mid: uuid.UUID, deadline: float
                 ) -> tuple[Any, set[int]]:
    db = await sc.db()
    claim = await db.claim_task(tid, mid, sc.node, os.getpid(),
                                sc.settings.heartbeat_timeout, deadline)
    _settled(sc, str(mid))
    if claim is None:
        await sc.forget(str(tid))
        return None, set()
    return claim, set(claim.saved)


async def _unclaim(sc: Sidecar, tid: uuid.UUID, mid: uuid.UUID) -> int | None:
    await sc.forget(str(tid))
    db = await sc.db()
    return await db.unclaim_task(tid, mid, sc.node, os.getpid())


# -- closing ------------------------------------------------------------------------------

async def close_execution(sc: Sidecar, celery: Celery, act: Actor, ex: Execution,
                          status: TaskStatus, outcome: str | None, error: str | None
                          ) -> str | None:
    """RETRYING, or the status the row ended in (None: someone else's write fenced it)."""
    if (status is TaskStatus.FAILED and ex.attempt <= act.max_retries
            and await asyncio.wait_for(_retry(sc, celery, act, ex, error), STEP_TIMEOUT)):
        return RETRYING
    ended = await asyncio.wait_for(sc.end(ex, status, outcome=outcome, error=error),
                                   END_RETRY_SECONDS + 30.0)
    if ended is None and status is TaskStatus.CANCELLED:
        # Its checkpoint is flushed; the row was not `cancelling`.
        ended = await asyncio.wait_for(_settle_stop(sc, celery, act, ex), STEP_TIMEOUT)
    if ended is not None and (ex.parent_id is not None or ex.children or ex.spawned):
        try:
            trees = TreeControl(sc.settings, await sc.db(), sc.redis, celery)
            await asyncio.wait_for(after_end(trees, task_id=ex.task_id, parent_id=ex.parent_id,
                                             had_children=bool(ex.children or ex.spawned),
                                             ended=ended), STEP_TIMEOUT)
        except Exception as exc:  # the reaper's tree rules settle what this could not
            log.warning("tree.after_end_failed", task_id=ex.id, error=repr(exc))
    return ended


async def _retry(sc: Sidecar, celery: Celery, act: Actor, ex: Execution,
                 error: str | None) -> bool:
    from shared.submit import publish

    new_message = uuid.uuid4()
    eta = datetime.now(UTC) + timedelta(seconds=min(60.0, 2.0 ** ex.attempt))
    row = await sc.requeue(ex, new_message, eta, error)
    if row is None:
        return False
    await publish(celery, act.name, ex.task_id, new_message, row["queue"], eta,
                  queued_at=row["queued_at"])
    log.info("task.retry_scheduled", task_id=ex.id, attempt=ex.attempt, eta=eta.isoformat())
    return True


async def _settle_stop(sc: Sidecar, celery: Celery, act: Actor, ex: Execution) -> str | None:
    """The task stopped for its token, and the row is not `cancelling`: it ends as the row
    says, or, for a row still `running`, as the token's reason says. A pause ends `paused`
    (its checkpoint kept, for a resume); a drain hands the task back to the queue under a
    fresh message (preempted: another worker goes on from the checkpoint); a cancel or a
    pause that came meanwhile wins over a drain. None when someone else ended the row or
    a newer attempt holds it."""
    db = await sc.db()
    p = ex.progress
    for _ in range(SETTLE_TRIES):
        state = await db.execution_state(ex.task_id)
        if state is None or state["attempt"] != ex.attempt:
            return None
        match state["status"]:
            case TaskStatus.PAUSING:
                ended = await db.finish_pause(ex.task_id, ex.attempt, outcome=Outcome.COOPERATIVE,
                                              done=p.done, failed=p.failed, total=p.total)
                if ended == TaskStatus.QUEUED:  # resumed while it stopped
                    await send_requeued(db, celery, ex.task_id)
                    await sc.publish("task.changed", ex, status=ended)
            case TaskStatus.CANCELLING:
                ended = await db.finish_task(ex.task_id, ex.attempt, TaskStatus.CANCELLED,
                                             outcome=Outcome.COOPERATIVE, done=p.done,
                                             failed=p.failed, total=p.total)
            case TaskStatus.RUNNING if ex.token.reason == CancelReason.SHUTDOWN:
                pauser = Pauser(sc.settings, db, sc.redis, celery)
                row = await pauser.preempt(ex.task_id, ex.attempt, by=CancelReason.SHUTDOWN)
                ended = TaskStatus.QUEUED if row is not None else None
            case TaskStatus.RUNNING:
                return await _settle_refused_cancel(sc, celery, act, ex)
            case _:
                return None
        if ended is not None:
            if ended != TaskStatus.QUEUED:  # the preempt announced itself
                await sc.publish("task.changed", ex, status=ended)
            return ended
    return None


async def _settle_refused_cancel(sc: Sidecar, celery: Celery, act: Actor, ex: Execution
                                 ) -> str | None:
    """The task stopped for a cancel, but the row was not `cancelling`.

    A time or memory limit whose DB write failed is recorded now. Any other cancel the DB never
    recorded (an event racing a cancel-all's transaction) is undone: a new attempt
    goes on from the checkpoint, rather than the row staying `running` with nothing
    behind it. A row someone else ended or took over is left alone."""
    from shared.submit import publish

    db = await sc.db()
    if ex.token.reason in (CancelReason.TIME_LIMIT, CancelReason.MEMORY_LIMIT):
        request = (db.request_time_limit if ex.token.reason == CancelReason.TIME_LIMIT
                   else db.request_memory_limit)
        await request(ex.task_id, ex.attempt, 0.0)
        return await db.finish_task(ex.task_id, ex.attempt, TaskStatus.CANCELLED,
                                    outcome=Outcome.COOPERATIVE, done=ex.progress.done,
                                    failed=ex.progress.failed, total=ex.progress.total)
    new_message = uuid.uuid4()
    row = await db.requeue_execution(ex.task_id, ex.attempt, new_message, None,
                                     "stopped by a cancel the database never recorded")
    if row is None:
        return None
    await publish(celery, act.name, ex.task_id, new_message, row["queue"],
                  queued_at=row["queued_at"])
    log.warning("task.stray_cancel_undone", task_id=ex.id, attempt=ex.attempt)
    return "requeued"
