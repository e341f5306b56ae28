"""The resource guard's side: a cancel for outgrowing a memory limit, and the executions
whose pool processes died under a live worker."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from shared.db.base import DbBase
from shared.db.rows import StaleExecution


class ResourceQueries(DbBase):
    async def request_memory_limit(self, task_id: uuid.UUID, attempt: int, grace: float
                                   ) -> datetime | None:
        """Moves a running execution to `cancelling` with reason `memory_limit`; None when
        the row was not running that attempt (already cancelling, ended, superseded)."""
        return await self.pool.fetchval(self.q["request_memory_limit"], task_id, attempt, grace)

    async def executions_of_processes(self, worker: str, pids: Sequence[int]
                                      ) -> list[StaleExecution]:
        """Running or cancelling rows that the given pool processes of `worker` claimed."""
        rows = await self.pool.fetch(self.q["executions_of_processes"], worker, list(pids))
        return [StaleExecution.from_row(r) for r in rows]
