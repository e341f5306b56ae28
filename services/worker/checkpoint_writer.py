"""Writes each chunk's result over the process's DB connection (fenced by attempt).

During a DB outage the task goes on: results are kept in order on the execution and
written, oldest first, before anything else the execution writes next (a checkpoint,
a heartbeat, its end)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from services.worker.db_connection import DB_CALL_TIMEOUT, UNREACHABLE, OneConnection
from services.worker.execution import Execution

log = structlog.get_logger("worker.sidecar")


class CheckpointWriter:
    def __init__(self, connection: OneConnection) -> None:
        self._connection = connection
        # The heartbeat and a checkpoint may both find buffered results to write: one at a
        # time, or both write the same chunk and both take it off the buffer.
        self._flush_lock = asyncio.Lock()

    async def save(self, ex: Execution, chunk: int, ok: bool, result: Any) -> bool:
        """Writes one chunk's result; during a DB outage it is kept and written later.

        A result the DB refuses for what it is (not JSON-serialisable, say) raises into
        the task: it is the task's bug, and buffering it would block every later write."""
        try:
            await self.flush(ex)
            db = await self._connection.get()
            return await asyncio.wait_for(
                db.save_result(ex.task_id, ex.attempt, chunk, ok, result), DB_CALL_TIMEOUT)
        except UNREACHABLE as exc:
            log.warning("task.checkpoint_buffered", task_id=ex.id, chunk=chunk, error=repr(exc))
            ex.pending.append((chunk, ok, result))
            return True

    async def flush(self, ex: Execution) -> None:
        """Writes the kept results; raises (keeping the rest) if the DB is still away."""
        if not ex.pending:
            return
        async with self._flush_lock:
            db = await self._connection.get()
            while ex.pending:
                chunk, ok, result = ex.pending[0]
                await asyncio.wait_for(
                    db.save_result(ex.task_id, ex.attempt, chunk, ok, result), DB_CALL_TIMEOUT)
                ex.pending.pop(0)
