"""Pause and resume, and the other ends of an execution that are not a cancel: paused,
killed while stopping, preempted back to the queue.

Methods that take `conn` run inside the caller's transaction (`Db.transaction()`).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from shared.db.base import DbBase, Record
from shared.errors import TaskNotFound


class PauseQueries(DbBase):
    # -- the operator's side ----------------------------------------------------------

    async def pause_task(self, task_id: uuid.UUID, *, reason: str | None, by: str,
                         grace: float) -> Record:
        """A pause of one task in one statement (see `pause_one`): the row as it is now, with
        `was` (the state found), `changed` and `fenced` (a cancel-all covers it)."""
        row = await self.pool.fetchrow(self.q["pause_one"], task_id, reason, by, grace)
        if row is None:
            raise TaskNotFound(task_id)
        return row

    async def lock_fences(self, conn: asyncpg.Connection) -> None:
        """The lock every bulk writer takes first (see `fence_lock` in queries.sql)."""
        await conn.execute(self.q["fence_lock"])

    async def clock_now(self, conn: asyncpg.Connection) -> datetime:
        return await conn.fetchval(self.q["clock_now"])

    async def pause_queued(self, conn: asyncpg.Connection, *, actor: str | None,
                           queue: str | None, before: datetime, reason: str | None, by: str,
                           limit: int) -> list[Record]:
        """Up to `limit` queued tasks in scope, queued before `before`, to `paused`: id,
        message_id. After the fence lock (see `fence_lock` in queries.sql)."""
        return await conn.fetch(self.q["pause_all_queued"], actor, queue, before, reason, by,
                                limit)

    async def pause_running(self, conn: asyncpg.Connection, *, actor: str | None,
                            queue: str | None, before: datetime, reason: str | None, by: str,
                            grace: float) -> list[Record]:
        """Running tasks in scope to `pausing`, due in `grace` seconds: id, message_id, worker."""
        return await conn.fetch(self.q["pause_all_running"], actor, queue, before, reason, by,
                                grace)

    async def resume_paused(self, conn: asyncpg.Connection, *, actor: str | None,
                            queue: str | None, limit: int) -> list[Record]:
        """Up to `limit` paused tasks in scope queued again, each with a fresh message id."""
        return await conn.fetch(self.q["resume_paused"], actor, queue, limit)

    async def resume_pausing(self, conn: asyncpg.Connection | None = None, *,
                             task_id: uuid.UUID | None = None, actor: str | None = None,
                             queue: str | None = None) -> list[Record]:
        """A resume recorded on the `pausing` rows in scope (one task, or all of an actor
        and queue): each is queued again once its execution stopped."""
        return await (conn or self.pool).fetch(self.q["resume_pausing"], task_id, actor, queue)

    # -- the execution's side (fenced by attempt) -------------------------------------

    async def finish_pause(self, task_id: uuid.UUID, attempt: int, *, outcome: str,
                           done: int | None = None, failed: int | None = None,
                           total: int | None = None) -> str | None:
        """`paused` from `pausing`, or `queued` under a fresh message (the caller publishes it)
        when a resume came meanwhile; None when the row moved on (a cancel won, superseded)."""
        return await self.pool.fetchval(self.q["finish_pause"], task_id, attempt, outcome, done,
                                        failed, total)

    async def record_kill(self, task_id: uuid.UUID, attempt: int, *, done: int | None = None,
                          failed: int | None = None) -> str | None:
        """A stopping execution killed after its grace ends as its stop says: `cancelled`, or
        `paused` for a pause, `queued` (a fresh message the caller publishes) for a pause
        resumed meanwhile. None when the row was not stopping that attempt."""
        return await self.pool.fetchval(self.q["record_kill"], task_id, attempt, done, failed)

    async def preempt_execution(self, task_id: uuid.UUID, attempt: int,
                                new_message_id: uuid.UUID) -> Record | None:
        """A running execution back to `queued` under `new_message_id` (the caller publishes
        it); None when the row is no longer running that attempt (a cancel or a pause won,
        or it ended)."""
        return await self.pool.fetchrow(self.q["preempt_execution"], task_id, attempt,
                                        new_message_id)
