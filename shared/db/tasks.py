"""Submitting and reading tasks, the actor catalogue, and the counts every view shows."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared.db.base import DbBase, Record
from shared.states import TaskStatus


class TaskQueries(DbBase):
    # -- submitting and reading -------------------------------------------------------

    async def insert_task(self, task_id: uuid.UUID, actor: str, queue: str, kwargs: dict[str, Any],
                          message_id: uuid.UUID, eta: datetime | None, *,
                          fail_fast: bool = False) -> Record:
        return await self.pool.fetchrow(self.q["insert_task"], task_id, actor, queue, kwargs,
                                        message_id, eta, fail_fast)

    async def delete_queued_task(self, task_id: uuid.UUID) -> None:
        await self.pool.execute(self.q["delete_queued_task"], task_id)

    async def get_task(self, task_id: uuid.UUID) -> Record | None:
        return await self.pool.fetchrow(self.q["get_task"], task_id)

    async def list_results(self, task_id: uuid.UUID) -> list[Record]:
        return await self.pool.fetch(self.q["list_results"], task_id)

    async def saved_chunks(self, task_id: uuid.UUID) -> set[int]:
        return {r["chunk"] for r in await self.pool.fetch(self.q["saved_chunks"], task_id)}

    async def active_by_message_ids(self, message_ids: list[uuid.UUID]) -> list[Record]:
        """Queued, running or cancelling rows whose current message is one of these."""
        return await self.pool.fetch(self.q["active_by_message_ids"], message_ids)

    async def counts(self, *, history: bool = True) -> dict[str, int]:
        rows = await self.pool.fetch(self.q["all_counts" if history else "active_counts"])
        counts = {s.value: 0 for s in TaskStatus}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    async def active_rows(self) -> list[Record]:
        return await self.pool.fetch(self.q["active_rows"])

    async def active_queues(self) -> list[str]:
        return [r["queue"] for r in await self.pool.fetch(self.q["active_queues"])]

    # -- the actor catalogue ----------------------------------------------------------

    async def upsert_actor(self, name: str, queue: str, params: dict[str, Any],
                           options: dict[str, Any]) -> None:
        await self.pool.execute(self.q["upsert_actor"], name, queue, params, options)

    async def get_actor(self, name: str) -> Record | None:
        return await self.pool.fetchrow(self.q["get_actor"], name)

    async def list_actors(self) -> list[Record]:
        return await self.pool.fetch(self.q["list_actors"])
