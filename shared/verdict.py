"""The verdict on an execution whose process is gone: a new attempt if its actor allows
automatic resumes, else `lost` (or `cancelled`, when a cancel was pending).

One rule for whoever finds the death: the reaper's zombie rule after a heartbeat timeout,
and a worker's main process the moment one of its pool processes dies.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from celery import Celery

from shared.db import Db
from shared.db.rows import StaleExecution
from shared.states import Outcome, TaskStatus
from shared.submit import publish


class PublishChange(Protocol):
    def __call__(self, task_id: Any, status: str, **extra: Any) -> Awaitable[None]: ...


@dataclass(frozen=True)
class Verdict:
    # The row's new status; None when the row had moved on (ended, superseded) meanwhile.
    status: str | None
    resumed: bool = False
    resumes: int | None = None


async def settle_gone(db: Db, celery: Celery, row: StaleExecution, publish_change: PublishChange,
                      *, outcome: str = Outcome.GONE) -> Verdict:
    """Settles one execution nothing runs any more, fenced by its attempt, and announces it.
    `outcome` is recorded when the row ends (lost or cancelled) rather than resumes."""
    actor = await db.get_actor(row.actor)
    allowed = int((actor["options"] or {}).get("auto_resume", 0)) if actor else 0
    # Only a running execution goes back to queued: one being cancelled stays cancelled.
    if row.status == TaskStatus.RUNNING and row.resumes < allowed:
        message_id = uuid.uuid4()
        new = await db.requeue_execution(row.id, row.attempt, message_id, None,
                                         "execution lost; resumed automatically")
        if new is not None:
            await publish(celery, row.actor, row.id, message_id, new["queue"],
                          queued_at=new["queued_at"])
            await publish_change(row.id, TaskStatus.QUEUED, resumed=True)
            return Verdict(status=TaskStatus.QUEUED, resumed=True, resumes=new["resumes"])
    status = await db.mark_dead(row.id, row.attempt, outcome)
    if status == TaskStatus.QUEUED:  # a pause resumed while it stopped: its fresh message
        from shared.pausing import send_requeued

        await send_requeued(db, celery, row.id)
    if status:
        await publish_change(row.id, status, outcome=outcome)
    return Verdict(status=status)
