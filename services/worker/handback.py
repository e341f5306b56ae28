"""A draining worker's main process hands a task back to the queue itself.

For the executions that cannot do it on their own: a straggler still running when the
drain's time is up, and one whose pool process died during the drain. The row goes back to
`queued` with a fresh message through the same preempt as a task that stopped by itself
(shared.pausing: fenced by attempt, published, announced as `task.preempted`), so another
worker goes on from its checkpoint. A row that a cancel or a pause reached meanwhile ends
as that one asked, its process killed like the ladder's.

A straggler is killed first, and handed back only once its process is confirmed gone or
done with it (stragglers.py): the new attempt can only start once the old process is gone,
so the two never run side by side and no chunk is done by both. The pool watch leaves a
draining worker's dead processes to the drain (see pool_watch.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis
import structlog
from celery import Celery

from shared.db import Db
from shared.events import encode
from shared.keys import Keys
from shared.pausing import Pauser, send_requeued
from shared.settings import Settings
from shared.states import CancelReason, TaskStatus

log = structlog.get_logger("worker.drain")

# A row in these states is still held by the execution that the drain hands back.
HELD = (TaskStatus.RUNNING, TaskStatus.CANCELLING, TaskStatus.PAUSING)


class HandBack:
    def __init__(self, settings: Settings, db: Db, celery: Celery, redis: aioredis.Redis,
                 node: str) -> None:
        self.db = db
        self.redis = redis
        self.keys = Keys(settings.key_prefix)
        self.node = node
        self.pauser = Pauser(settings, db, redis, celery)

    async def execution(self, task_id: uuid.UUID, message_id: str) -> str | None:
        """Preempts the execution of `message_id`, whose process the caller has confirmed
        gone or done with it (else the two attempts could run side by side). Returns the
        row's new status, or None when the row had moved on (its execution ended it, or a
        newer attempt holds it)."""
        row = await self.db.get_task(task_id)
        if row is None or str(row["message_id"]) != message_id or row["status"] not in HELD:
            return None
        if row["status"] == TaskStatus.RUNNING:
            new = await self.pauser.preempt(task_id, row["attempt"], by=CancelReason.SHUTDOWN)
            if new is not None:
                log.info("worker.drain_handed_back", task_id=str(task_id),
                         attempt=row["attempt"], node=self.node)
                return TaskStatus.QUEUED
        # A cancel or a pause came first: with the process gone, it ends as that one asked.
        status = await self.db.record_kill(task_id, row["attempt"])
        if status == TaskStatus.QUEUED:  # a pause resumed while it stopped
            await send_requeued(self.db, self.pauser.celery, task_id)
        if status is not None:
            await self._announce(row, status)
            log.info("worker.drain_yielded", task_id=str(task_id), attempt=row["attempt"],
                     status=status, node=self.node)
        return status

    async def _announce(self, row: Any, status: str) -> None:
        try:
            await self.redis.publish(self.keys.events_channel, encode(
                "task.changed", task_id=str(row["id"]), actor=row["actor"], status=status,
                outcome="killed", worker=self.node))
        except Exception as exc:  # the row is the record; the event only makes news travel
            log.warning("worker.drain_event_failed", error=str(exc))
