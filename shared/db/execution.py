"""The worker's side: claiming a task and writing its progress, fenced by attempt."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.db.base import DbBase, Record
from shared.db.beats import Beat, BeatState
from shared.db.rows import Claim
from shared.states import TaskStatus


class ClaimBusy(Exception):
    """Another writer holds the task's row: the claim did not wait, try again shortly."""


class ExecutionQueries(DbBase):
    async def claim_task(self, task_id: uuid.UUID, message_id: uuid.UUID, worker: str, pid: int,
                         lease_seconds: float, deadline: float = 10.0) -> Claim | None:
        """The claimed row, or None when the task is not claimable: covered by a cancel fence
        (it was just ended as cancelled), finished, stale, already running, or reached after
        `deadline` seconds. Raises ClaimBusy when someone holds the row right now."""
        row = await self.pool.fetchrow(self.q["claim_task"], task_id, message_id, worker, pid,
                                       lease_seconds, deadline, timeout=deadline + 5.0)
        if row is None or row["fenced"]:
            return None
        if row["busy"]:
            raise ClaimBusy(f"task {task_id} is held by another writer")
        return Claim.from_row(row)

    async def unclaim_task(self, task_id: uuid.UUID, message_id: uuid.UUID, worker: str,
                           pid: int) -> int | None:
        return await self.pool.fetchval(self.q["unclaim_task"], task_id, message_id, worker, pid)

    async def heartbeat(self, task_id: uuid.UUID, attempt: int, *, done: int, failed: int,
                        total: int | None, current: int | None, eta_seconds: float | None,
                        rss_bytes: int | None = None, cpu_percent: float | None = None
                        ) -> Record | None:
        """Progress, and what the pool process uses (a None reading keeps the last one)."""
        return await self.pool.fetchrow(self.q["heartbeat"], task_id, attempt, done, failed, total,
                                        current, eta_seconds, rss_bytes, cpu_percent)

    async def node_heartbeat(self, beats: Sequence[Beat], watched: Sequence[uuid.UUID] = ()
                             ) -> list[BeatState]:
        """Every beat of one worker's pool processes in one statement, and the state of each
        of its executions: those beats' and the `watched` ones (running, reporting nothing).
        A beat whose row another transaction holds is not written (`written` is false)."""
        def column(name: str) -> list[Any]:
            return [getattr(b, name) for b in beats]

        rows = await self.pool.fetch(
            self.q["node_heartbeat"], column("task_id"), column("attempt"), column("age"),
            column("done"), column("failed"), column("total"), column("current"),
            column("eta_seconds"), column("rss_bytes"), column("cpu_percent"), list(watched))
        return [BeatState.from_row(r) for r in rows]

    async def execution_state(self, task_id: uuid.UUID) -> Record | None:
        return await self.pool.fetchrow(self.q["execution_state"], task_id)

    async def save_result(self, task_id: uuid.UUID, attempt: int, chunk: int, ok: bool,
                          result: Any) -> bool:
        """False when the write was fenced off (stale attempt) or the chunk was already saved."""
        row = await self.pool.fetchrow(self.q["save_result"], task_id, attempt, chunk, ok, result)
        return row is not None

    async def finish_task(self, task_id: uuid.UUID, attempt: int, status: TaskStatus, *,
                          outcome: str | None = None, error: str | None = None,
                          done: int | None = None, failed: int | None = None,
                          total: int | None = None) -> str | None:
        return await self.pool.fetchval(self.q["finish_task"], task_id, attempt, str(status),
                                        outcome, error, done, failed, total)

    async def request_time_limit(self, task_id: uuid.UUID, attempt: int, grace: float
                                 ) -> datetime | None:
        return await self.pool.fetchval(self.q["request_time_limit"], task_id, attempt, grace)
