"""A draining worker's main process hands a task back to the queue itself.

For the executions that cannot do it on their own: a straggler still running when the
drain's time is up (it is killed right after), and one whose pool process died during the
drain. The row goes back to `queued` with a fresh message through the same preempt as a
task that stopped by itself (fenced by attempt; a cancel or a pause that came meanwhile
wins), so another worker goes on from its checkpoint.

The order for a straggler is: preempt, kill, publish. From the preempt's commit on the
row is no longer `running`, so the old process can save no chunk the next attempt would
not see; and the new message exists only once the old process is gone, so the two never
run side by side.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from celery import Celery

from shared.db import Db
from shared.events import encode
from shared.keys import Keys
from shared.submit import publish

log = structlog.get_logger("worker.drain")

# A row in these states is still held by the execution that the drain hands back.
HELD = ("running", "cancelling", "pausing")


class HandBack:
    def __init__(self, db: Db, celery: Celery, redis: aioredis.Redis, keys: Keys,
                 node: str) -> None:
        self.db = db
        self.celery = celery
        self.redis = redis
        self.keys = keys
        self.node = node

    async def execution(self, task_id: uuid.UUID, message_id: str,
                        stop: Callable[[], None] | None = None) -> str | None:
        """Preempts the execution of `message_id`, then runs `stop` (the kill), then sends
        the new message. A row being cancelled or paused is not preempted: it ends as that
        stop asked, its process killed. Returns the row's new status, or None when the row
        had moved on (its execution ended it, or a newer attempt holds it). `stop` runs in
        every case."""
        ended = row = None
        try:
            row = await self.db.get_task(task_id)
            if row is None or str(row["message_id"]) != message_id or row["status"] not in HELD:
                return None
            if row["status"] == "running":
                ended = await self.db.preempt_execution(task_id, row["attempt"], uuid.uuid4())
        finally:
            if stop is not None:
                stop()
        if ended is None:
            # A cancel or a pause came first: with its process gone, it ends as that asked.
            status = await self.db.record_kill(task_id, row["attempt"])
            if status is not None:
                await self._announce("task.changed", row, status, outcome="killed")
                log.info("task.drain_yielded", task_id=str(task_id), attempt=row["attempt"],
                         status=status, node=self.node)
            return status
        await publish(self.celery, ended["actor"], task_id, ended["message_id"], ended["queue"],
                      queued_at=ended["queued_at"])
        await self._announce("task.preempted", ended, "queued", attempt=row["attempt"])
        log.info("task.preempted", task_id=str(task_id), attempt=row["attempt"],
                 message_id=str(ended["message_id"]), by="drain", node=self.node)
        return "queued"

    async def _announce(self, kind: str, row: Any, status: str, **fields: Any) -> None:
        try:
            await self.redis.publish(self.keys.events_channel, encode(
                kind, task_id=str(row["id"]), actor=row["actor"], status=status,
                by="drain", worker=self.node, **fields))
        except Exception as exc:  # the row is the record; the event only makes news travel
            log.warning("worker.drain_event_failed", kind=kind, error=str(exc))
