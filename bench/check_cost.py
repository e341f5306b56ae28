"""2. What one cancellation check costs inside task code.

Ours: `CancelToken.cancelled` (an attribute read) and `raise_if_cancelled()` (a method
call), timed with timeit, best of several repeats. Celery's `AbortableTask.is_aborted()`
reads the task's state from the Redis result backend on every call. For scale, one indexed
row read by id: the size of the DB round trip through which the sidecar also polls for
cancels (its heartbeat write, once per HEARTBEAT_INTERVAL), outside task code.
"""

from __future__ import annotations

import time
import timeit
import uuid
from typing import Any

from bench.plain_worker import PlainWorker
from bench.rows import Rows
from shared.token import CancelToken


def _per_call_ns(stmt: str, scope: dict[str, Any], number: int, repeat: int = 7) -> float:
    return min(timeit.Timer(stmt, globals=scope).repeat(repeat=repeat, number=number)) \
        / number * 1e9


def token(number: int) -> dict[str, Any]:
    tok = CancelToken()
    scope = {"tok": tok}
    return {
        "cancelled_attr_ns": round(_per_call_ns("tok.cancelled", scope, number), 2),
        "raise_if_cancelled_ns": round(_per_call_ns("tok.raise_if_cancelled()", scope, number), 2),
        # What timeit's own loop costs per iteration, included in the two figures above.
        "empty_loop_ns": round(_per_call_ns("pass", scope, number), 2),
        "number": number,
    }


def is_aborted(worker: PlainWorker, number: int) -> dict[str, Any]:
    task = worker.app.tasks["bench.abortable_loop"]
    # A running task asks about its own id; until someone aborts it, the key is absent.
    scope = {"task": task, "tid": str(uuid.uuid4())}
    task.is_aborted(task_id=scope["tid"])  # connects
    ns = _per_call_ns("task.is_aborted(task_id=tid)", scope, number, repeat=3)
    return {"is_aborted_us": round(ns / 1000, 2), "number": number}


async def db_poll(rows: Rows, task_id: str, number: int) -> dict[str, Any]:
    tid = uuid.UUID(task_id)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(number):
            await rows.scalar("SELECT status FROM tasks WHERE id = $1", tid)
        best = min(best, (time.perf_counter() - started) / number)
    return {"row_read_us": round(best * 1e6, 1), "number": number}
