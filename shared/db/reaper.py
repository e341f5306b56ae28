"""What the reaper reads and writes: dead and stranded executions, retention, tallies."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from shared.db.base import DbBase, Record
from shared.db.rows import DueCancel, StaleExecution


class ReaperQueries(DbBase):
    async def stale_executions(self, timeout: float) -> list[StaleExecution]:
        rows = await self.pool.fetch(self.q["stale_executions"], timeout)
        return [StaleExecution.from_row(r) for r in rows]

    async def due_cancellations(self, margin: float) -> list[DueCancel]:
        rows = await self.pool.fetch(self.q["due_cancellations"], margin)
        return [DueCancel.from_row(r) for r in rows]

    async def mark_dead(self, task_id: uuid.UUID, attempt: int, outcome: str) -> str | None:
        return await self.pool.fetchval(self.q["mark_dead"], task_id, attempt, outcome)

    async def requeue_execution(self, task_id: uuid.UUID, attempt: int, message_id: uuid.UUID,
                                eta: datetime | None = None, error: str | None = None
                                ) -> Record | None:
        return await self.pool.fetchrow(self.q["requeue_execution"], task_id, attempt, message_id,
                                        eta, error)

    async def active_by_ids(self, ids: Sequence[uuid.UUID]) -> list[Record]:
        return await self.pool.fetch(self.q["active_by_ids"], list(ids))

    async def stranded_queued(self, older_than: float, after: tuple[datetime, uuid.UUID] | None,
                              limit: int) -> list[Record]:
        at, tid = after if after else (None, None)
        return await self.pool.fetch(self.q["stranded_queued"], older_than, at, tid, limit)

    async def requeue_message(self, task_id: uuid.UUID, old: uuid.UUID, new: uuid.UUID
                              ) -> Record | None:
        return await self.pool.fetchrow(self.q["requeue_message"], task_id, old, new)

    async def mark_queued_lost(self, task_id: uuid.UUID, message_id: uuid.UUID) -> str | None:
        return await self.pool.fetchval(self.q["mark_queued_lost"], task_id, message_id)

    async def prune_history(self, days: int, limit: int = 1000) -> int:
        status = await self.pool.execute(self.q["prune_history"], days, limit)
        return int(status.split()[-1])

    async def prune_audit(self, days: int, limit: int = 1000) -> int:
        status = await self.pool.execute(self.q["prune_audit"], days, limit)
        fences = await self.pool.execute(self.q["prune_fences"], days)
        return int(status.split()[-1]) + int(fences.split()[-1])

    async def fold_tallies(self) -> None:
        await self.pool.execute(self.q["fold_tallies"])
