"""Pause and resume, for one task or everything in a scope, and the preempt: the ends of an
execution that are not a cancel.

Shaped like shared/cancellation.py, and used alike by the API, taskctl and the worker: the
DB first (one transaction per step, an audit row in cancel_audit whose scope names the
action), then the Redis fast path and the change event, both owned by the operation.

A pause stops an execution the way a cancel does (the same token, with reason `pause`, the
same grace period and kill step), but the row ends `paused`, its checkpoint kept. A queued
task is paused at once: its message is dropped when a worker takes it, and a resume
publishes a fresh one. A preempted execution (its worker drains) goes back to `queued`
under a fresh message, to go on from its checkpoint on another worker.

pause-all writes the queued rows it covers itself, in bounded batches, where cancel-all
writes a fence: a paused row needs a fresh message at its resume, so resume-all costs
O(paused) whichever way the pause was written, and each paused row must read `paused` for
the dashboard, a resume or a cancel of that one task. A fence would add a second kind of
check to every claim, the hot path, and fences that resume-all would have to lift. A batch
of a few thousand rows is one statement of some milliseconds, so 1,000 queued tasks are
one transaction, and a claim waits for at most one batch of a larger backlog.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from celery import Celery

from shared.cancellation import Canceller, CancelOne
from shared.db import Db, Record
from shared.errors import BrokerUnavailable, CancelConflict
from shared.events import encode
from shared.keys import Keys
from shared.settings import Settings
from shared.states import PAUSE_PENDING, TERMINAL, CancelReason, TaskStatus
from shared.submit import Message, publish, publish_many

log = structlog.get_logger("pausing")

# Queued rows paused per transaction: claims wait for the fence lock only this long.
PAUSE_BATCH = 2000
# Paused rows queued again per transaction, their messages published after each commit.
RESUME_BATCH = 1000


# A pause of one task answers as a cancel of one does: the row, and whether it changed.
PauseOne = CancelOne


@dataclass
class PauseAll:
    # Queued tasks paused at once (never started, or between attempts).
    paused: int = 0
    # Running tasks asked to stop: `pausing` until each has saved its work and stopped.
    pausing: list[uuid.UUID] = field(default_factory=list)
    audit_id: int | None = None
    took_ms: float = 0.0


@dataclass
class ResumeAll:
    resumed: int = 0
    # Tasks still stopping for a pause: each is queued again once its execution stopped.
    resuming: int = 0
    audit_id: int | None = None
    took_ms: float = 0.0


class Pauser:
    def __init__(self, settings: Settings, db: Db, redis: aioredis.Redis, celery: Celery) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.celery = celery
        self.keys = Keys(settings.key_prefix)
        # Its fast path and change events are the cancel ladder's.
        self.canceller = Canceller(settings, db, redis, celery)

    async def pause(self, task_id: uuid.UUID, *, by: str, reason: str | None = None) -> PauseOne:
        """Raises TaskNotFound, or CancelConflict for a task that ended, is being cancelled,
        or that a cancel-all covers."""
        row = await self.db.pause_task(task_id, reason=reason, by=by,
                                       grace=self.settings.cancel_grace)
        was = TaskStatus(row["was"])
        if row["fenced"]:
            raise CancelConflict("cannot pause a task that a cancel-all cancelled", row)
        if row["has_children"] and (row["changed"] or was in (TaskStatus.WAITING, *PAUSE_PENDING,
                                                              TaskStatus.PAUSED)):
            # From the node's own pause no descendant starts; now each one's own row.
            subtree = await self.canceller.trees.pause(task_id, by=by, reason=reason)
            if not row["changed"]:
                return PauseOne(row=row, changed=bool(subtree.rows))
        if not row["changed"]:
            if was in PAUSE_PENDING or was is TaskStatus.PAUSED:
                return PauseOne(row=row, changed=False)  # a repeated pause
            why = f"already {was}" if was in TERMINAL else f"{was}: a cancel wins over a pause"
            raise CancelConflict(f"cannot pause a task that is {why}", row)
        now = TaskStatus(row["status"])
        change = encode("task.pause_requested", task_id=str(task_id), status=now, by=by)
        if now is TaskStatus.PAUSED:
            await self._announce(None, [row["message_id"]], change)
        else:
            await self.canceller.announce({"ids": [str(task_id)], "reason": CancelReason.PAUSE},
                                          [], task_id=task_id, change=change)
        log.info("task.pause_requested", task_id=str(task_id), was=str(was), now=str(now),
                 by=by, reason=reason)
        return PauseOne(row=row, changed=True)

    async def pause_all(self, *, by: str, reason: str | None = None, actor: str | None = None,
                        queue: str | None = None) -> PauseAll:
        """Every queued and running task in scope, as it stands when this begins: queued ones
        `paused`, running ones `pausing` (one event for the whole fleet names them)."""
        started = time.perf_counter()
        out = PauseAll()
        grace = self.settings.cancel_grace
        dropped: list[uuid.UUID] = []
        before: datetime | None = None
        while True:
            # Under the fence lock, as cancel-all: no claim commits in between, so a task is
            # either still queued (paused here) or running (`pausing` below), and no two
            # bulk writers take the same rows' locks in different orders.
            async with self.db.transaction() as conn:
                await self.db.lock_fences(conn)
                if before is None:
                    before = await self.db.clock_now(conn)
                queued = await self.db.pause_queued(conn, actor=actor, queue=queue,
                                                    before=before, reason=reason, by=by,
                                                    limit=PAUSE_BATCH)
                # Again after every batch: a task claimed between two batches is caught.
                running = await self.db.pause_running(conn, actor=actor, queue=queue,
                                                      before=before, reason=reason, by=by,
                                                      grace=grace)
                out.paused += len(queued)
                dropped.extend(r["message_id"] for r in queued)
                out.pausing.extend(r["id"] for r in running)
                last = len(queued) < PAUSE_BATCH
                if last:
                    audit = await self.db.insert_audit(
                        conn, by=by, reason=reason,
                        scope={"action": "pause", "all": True, "actor": actor, "queue": queue,
                               "paused": out.paused, "pausing": len(out.pausing)},
                        forced=False, cancelled=0, cancelling=0, task_ids=out.pausing)
                    out.audit_id = audit["id"]
            if last:
                break
        event = ({"ids": [str(i) for i in out.pausing], "reason": CancelReason.PAUSE}
                 if out.pausing else None)
        await self._announce(event, dropped, encode(
            "tasks.pause_all", by=by, actor=actor, queue=queue, paused=out.paused,
            pausing=len(out.pausing)))
        out.took_ms = (time.perf_counter() - started) * 1000
        log.info("task.pause_all", by=by, actor=actor, queue=queue, paused=out.paused,
                 pausing=len(out.pausing), audit_id=out.audit_id, took_ms=round(out.took_ms, 1))
        return out

    async def resume_all(self, *, by: str, actor: str | None = None, queue: str | None = None
                         ) -> ResumeAll:
        """Every paused task in scope queued again under a fresh message, a batch at a time,
        and every pausing one once its execution has stopped (`resuming`).

        Each batch commits before its messages go out, so a worker never finds its row still
        locked. Raises BrokerUnavailable when the broker refuses a message: the batches
        written until then stay queued (audited), and the reaper publishes the messages of
        those the broker never took (the lost-message rule)."""
        started = time.perf_counter()
        out = ResumeAll()
        # The pausing rows first: one that stops before this commits is paused, and the
        # batches below take it; one that stops after is queued again by its stop.
        out.resuming = len(await self.db.resume_pausing(actor=actor, queue=queue))
        try:
            while True:
                async with self.db.transaction() as conn:
                    rows = await self.db.resume_paused(conn, actor=actor, queue=queue,
                                                       limit=RESUME_BATCH)
                out.resumed += len(rows)
                await publish_many(self.celery, [
                    Message(r["actor"], r["id"], r["message_id"], r["queue"], r["eta"],
                            r["queued_at"]) for r in rows])
                if len(rows) < RESUME_BATCH:
                    break
        finally:
            if out.resumed or out.resuming:
                await self._audit_resume(out, by=by, actor=actor, queue=queue)
        await self.canceller.publish_change("tasks.resume_all", by=by, actor=actor, queue=queue,
                                            resumed=out.resumed, resuming=out.resuming,
                                            status=TaskStatus.QUEUED)
        out.took_ms = (time.perf_counter() - started) * 1000
        log.info("task.resume_all", by=by, actor=actor, queue=queue, resumed=out.resumed,
                 resuming=out.resuming, audit_id=out.audit_id, took_ms=round(out.took_ms, 1))
        return out

    async def _audit_resume(self, out: ResumeAll, *, by: str, actor: str | None,
                            queue: str | None) -> None:
        async with self.db.transaction() as conn:
            audit = await self.db.insert_audit(
                conn, by=by, reason=None,
                scope={"action": "resume", "all": True, "actor": actor, "queue": queue,
                       "resumed": out.resumed, "resuming": out.resuming},
                forced=False, cancelled=0, cancelling=0, task_ids=[])
        out.audit_id = audit["id"]

    async def preempt(self, task_id: uuid.UUID, attempt: int, *, by: str) -> Record | None:
        """A running execution back to `queued` under a fresh message, published here, and
        the event `task.preempted`. None when the row is no longer running that attempt: a
        cancel or a pause that came meanwhile wins, and the row ends as that one says."""
        message_id = uuid.uuid4()
        row = await self.db.preempt_execution(task_id, attempt, message_id)
        if row is None:
            return None
        try:
            await publish(self.celery, row["actor"], task_id, message_id, row["queue"],
                          queued_at=row["queued_at"])
        except BrokerUnavailable as exc:
            # The row is queued all the same; the reaper's lost-message rule sends it again.
            log.warning("task.preempt_publish_failed", task_id=str(task_id), error=str(exc))
        log.info("task.preempted", task_id=str(task_id), attempt=attempt,
                 message_id=str(message_id), by=by)
        await self.canceller.publish_change("task.preempted", task_id=str(task_id),
                                            actor=row["actor"], status=TaskStatus.QUEUED,
                                            attempt=attempt, by=by)
        return row

    async def _announce(self, event: dict[str, Any] | None, dropped: list[uuid.UUID],
                        change: str) -> None:
        """Fast path only, in one round trip: the messages of paused queued tasks join the
        set of messages a worker drops at once (the reaper also revokes them in Celery), and
        one event on the fleet's channel names the executions to stop."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if dropped:
                    now = time.time()
                    pipe.zadd(self.keys.cancelled, {str(m): now for m in dropped})
                if event is not None:
                    pipe.publish(self.keys.cancel_channel, json.dumps(event))
                pipe.publish(self.keys.events_channel, change)
                await pipe.execute()
        except Exception as exc:
            log.warning("task.pause_event_failed", error=str(exc))


async def send_requeued(db: Db, celery: Celery, task_id: uuid.UUID) -> Record | None:
    """Publishes the fresh message of a pause resumed while it stopped, which its stop
    (finish_pause, record_kill, mark_dead) queued again. None when the row is no longer
    queued. A broker that refuses it leaves the row queued: the reaper's lost-message rule
    sends it."""
    row = await db.get_task(task_id)
    if row is None or row["status"] != TaskStatus.QUEUED:
        return None
    try:
        await publish(celery, row["actor"], task_id, row["message_id"], row["queue"], row["eta"],
                      queued_at=row["queued_at"])
    except BrokerUnavailable as exc:
        log.warning("task.resume_publish_failed", task_id=str(task_id), error=str(exc))
    log.info("task.resumed_after_stop", task_id=str(task_id), attempt=row["attempt"],
             message_id=str(row["message_id"]))
    return row
