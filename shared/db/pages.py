"""Reads sized for a client: the task list without kwargs, chunk results a page at a time."""

from __future__ import annotations

import uuid
from datetime import datetime

from shared.db.base import DbBase, Record


class PageQueries(DbBase):
    async def list_task_summaries(self, *, status: str | None, actor: str | None,
                                  after: tuple[datetime, uuid.UUID] | None, limit: int,
                                  roots: bool = False) -> list[Record]:
        """Newest first after the keyset `after`; every column but kwargs, the error cut.
        `roots`: tasks without a parent only."""
        created, tid = after if after else (None, None)
        return await self.pool.fetch(self.q["list_task_summaries"], status, actor, created, tid,
                                     limit, roots)

    async def results_page(self, task_id: uuid.UUID, *, after: int, limit: int) -> list[Record]:
        """Chunk results with a chunk number above `after`, in order."""
        return await self.pool.fetch(self.q["list_results_page"], task_id, after, limit)
