"""An actor's `time_limit`: when it expires, the execution is cancelled through the same
ladder as any cancel (reason `time_limit`), so it saves its checkpoint like one."""

from __future__ import annotations

import asyncio

import structlog

from services.worker.cancel_listener import Trigger
from services.worker.db_connection import OneConnection
from services.worker.execution import Execution

log = structlog.get_logger("worker.sidecar")


async def enforce_time_limit(ex: Execution, limit: float, *, connection: OneConnection,
                             cancel_grace: float, trigger: Trigger) -> None:
    await asyncio.sleep(limit)
    if ex.finished.is_set():
        return
    try:
        # The row says `cancelling` with its deadline, as for a cancel from outside.
        db = await connection.get()
        await db.request_time_limit(ex.task_id, ex.attempt, cancel_grace)
    except Exception as exc:
        log.warning("task.time_limit_db_error", task_id=ex.id, error=str(exc))
    trigger(ex, "time_limit", forced=False, via="time_limit")
