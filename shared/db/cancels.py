"""The cancel ladder's writes: one task, cancel-all and its fences, force-kill, resume, audit.

Methods that take `conn` run inside the caller's transaction (`Db.transaction()`), so an
operation of several statements commits as one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.db.base import DbBase, Record
from shared.errors import TaskNotFound

# A row's place in the order the fence sweep walks: (queued_at, id).
Edge = tuple[datetime, uuid.UUID]
_NO_ID = uuid.UUID(int=0)
# Before every row.
WALK_START: Edge = (datetime(1, 1, 1, tzinfo=UTC), _NO_ID)


@dataclass(frozen=True)
class SweepStep:
    """One sweep batch: rows written `cancelled`; rows taken (fewer than asked for: the range
    holds nothing more but rows someone else holds); the last row taken, in the batch's order."""

    swept: int
    taken: int
    edge: Edge | None


class CancelQueries(DbBase):
    # -- one task ---------------------------------------------------------------------

    async def cancel_task(self, task_id: uuid.UUID, *, reason: str | None, by: str,
                          forced: bool, grace: float) -> Record:
        """The first rung for one task in one statement (see `cancel_one`): the row as it is
        now, with `was` (the state found) and `changed` (whether this call did anything)."""
        row = await self.pool.fetchrow(self.q["cancel_one"], task_id, reason, by, forced, grace)
        if row is None:
            raise TaskNotFound(task_id)
        return row

    async def lock_task(self, conn: asyncpg.Connection, task_id: uuid.UUID) -> Record:
        """The row, held until the caller's transaction ends (after the fence lock)."""
        row = await conn.fetchrow(self.q["lock_task"], task_id)
        if row is None:
            raise TaskNotFound(task_id)
        return row

    async def resume_task(self, conn: asyncpg.Connection, task_id: uuid.UUID,
                          message_id: uuid.UUID, resumable: Sequence[str]) -> Record | None:
        """Queues the task again under `message_id`, if its state is one of `resumable`."""
        return await conn.fetchrow(self.q["resume_task"], task_id, message_id, list(resumable))

    # -- cancel-all -------------------------------------------------------------------

    async def set_fence(self, conn: asyncpg.Connection, *, actor: str | None, queue: str | None,
                        reason: str | None, by: str, forced: bool, sweep: int = 0
                        ) -> tuple[Record, int]:
        """Locks the fences (see `fence_lock` in queries.sql) and writes a new one; inside the
        caller's transaction, which must be short: claims wait for it to commit. Then writes
        up to `sweep` of the covered rows `cancelled` at once (the reaper takes the rest);
        returns the fence and how many rows that was."""
        await conn.execute(self.q["fence_lock"])
        fence = await conn.fetchrow(self.q["cancel_all_fence"], actor, queue, reason, by, forced)
        swept = await self.sweep_fence(fence, sweep, conn=conn) if sweep and fence["covered"] else 0
        return fence, swept

    async def mark_cancelling(self, conn: asyncpg.Connection, *, actor: str | None,
                              queue: str | None, reason: str | None, by: str, forced: bool,
                              grace: float) -> list[Record]:
        """Running tasks in scope to `cancelling`, due in `grace` seconds: id, message_id, worker."""
        return await conn.fetch(self.q["cancel_all_running"], actor, queue, reason, by, forced,
                                grace)

    async def hasten_cancelling(self, conn: asyncpg.Connection, *, actor: str | None,
                                queue: str | None) -> list[Record]:
        """Tasks in scope already cancelling become forced, due now: id, message_id, worker."""
        return await conn.fetch(self.q["cancel_all_hasten"], actor, queue)

    async def link_fence_audit(self, conn: asyncpg.Connection, fence_id: int,
                               audit_id: int) -> None:
        await conn.execute(self.q["fence_audit"], fence_id, audit_id)

    async def force_kill_all(self, conn: asyncpg.Connection, *, reason: str, by: str,
                             remote_nodes: Sequence[str] = ()) -> list[Record]:
        """Ends every non-terminal row as cancelled, but for executions on `remote_nodes`
        (cancelled with force instead); inside the caller's transaction, after the fence
        lock that every cancel-all takes first (see `fence_lock` in queries.sql)."""
        await conn.execute(self.q["fence_lock"])
        return await conn.fetch(self.q["force_kill_all"], reason, by, list(remote_nodes))

    async def clock(self, conn: asyncpg.Connection) -> float:
        """The DB's clock now (epoch seconds), the one clock every claim's start is read from."""
        return float(await conn.fetchval(self.q["clock_epoch"]))

    # -- the audit trail --------------------------------------------------------------

    async def insert_audit(self, conn: asyncpg.Connection, *, by: str, reason: str | None,
                           scope: dict[str, Any], forced: bool, cancelled: int, cancelling: int,
                           task_ids: Sequence[uuid.UUID]) -> Record:
        return await conn.fetchrow(self.q["insert_audit"], by, reason, scope, forced, cancelled,
                                   cancelling, list(task_ids))

    async def list_audit(self, limit: int = 50) -> list[Record]:
        return await self.pool.fetch(self.q["list_audit"], limit)

    # -- cancel fences, swept by the reaper -------------------------------------------

    async def open_fences(self) -> list[Record]:
        return await self.pool.fetch(self.q["open_fences"])

    async def sweep_fence(self, fence: Record, batch: int,
                          conn: asyncpg.Connection | None = None) -> int:
        """Up to `batch` covered rows to `cancelled`, oldest first: queued ones, then paused
        ones; counted on the fence."""
        n = 0
        for paused in (False, True):
            step = await self.sweep_fence_range(fence, batch - n, paused=paused, conn=conn)
            n += step.swept
            if n >= batch:
                break
        if n:
            await (conn or self.pool).execute(self.q["fence_progress"], fence["id"], n)
        return n

    async def sweep_fence_range(self, fence: Record, batch: int, *, paused: bool = False,
                                descending: bool = False, after: Edge | None = None,
                                before: Edge | None = None,
                                conn: asyncpg.Connection | None = None) -> SweepStep:
        """One batch of the covered queued (or paused) rows between `after` and `before`
        (open ends: the oldest row and the fence), to `cancelled`; oldest first, or newest
        first if `descending` (queued rows only). Not counted on the fence (see
        `fence_progress`)."""
        query = ("sweep_fence_paused" if paused
                 else "sweep_fence_down" if descending else "sweep_fence")
        low, high = after or WALK_START, before or (fence["at"], _NO_ID)
        row = await (conn or self.pool).fetchrow(
            self.q[query], fence["at"], fence["actor"], fence["queue"], fence["reason"],
            fence["by"], fence["forced"], batch, *low, *high)
        edge = None if row["edge_at"] is None else (row["edge_at"], row["edge_id"])
        return SweepStep(swept=int(row["swept"]), taken=int(row["taken"]), edge=edge)

    async def fence_progress(self, fence_id: int, swept: int) -> None:
        await self.pool.execute(self.q["fence_progress"], fence_id, swept)

    async def fence_leftovers(self, fence: Record) -> bool:
        """Whether any row the fence covers is still queued or paused (read only)."""
        return bool(await self.pool.fetchval(self.q["fence_leftovers"], fence["at"],
                                             fence["actor"], fence["queue"]))

    async def fence_swept(self, fence_id: int) -> None:
        await self.pool.execute(self.q["fence_swept"], fence_id)

    async def fence_purged(self, fence_id: int) -> None:
        await self.pool.execute(self.q["fence_purged"], fence_id)
