"""Reading task rows straight from PostgreSQL, to see when a state change has landed."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg

from shared.states import ACTIVE, TERMINAL

_TERMINAL = [s.value for s in TERMINAL]
_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE))


class Rows:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, database_url: str) -> Rows:
        return cls(await asyncpg.create_pool(database_url, min_size=1, max_size=4,
                                             statement_cache_size=0))

    async def close(self) -> None:
        await self.pool.close()

    async def get(self, task_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT id, status, outcome, pid, attempt, started_at, finished_at "
            "FROM tasks WHERE id = $1", uuid.UUID(task_id))

    async def wait(self, task_id: str, statuses: list[str], *, timeout: float,
                   interval: float = 0.002) -> tuple[asyncpg.Record, float]:
        """Returns the row once its status is one of `statuses`, and the perf_counter of
        the poll that saw it."""
        deadline = time.perf_counter() + timeout
        while True:
            row = await self.get(task_id)
            seen = time.perf_counter()
            if row is not None and row["status"] in statuses:
                return row, seen
            if seen > deadline:
                raise TimeoutError(f"task {task_id} not in {statuses} after {timeout}s: "
                                   f"{dict(row) if row else None}")
            await asyncio.sleep(interval)

    async def wait_running(self, task_id: str, timeout: float = 30.0) -> asyncpg.Record:
        return (await self.wait(task_id, ["running"], timeout=timeout, interval=0.005))[0]

    async def wait_terminal(self, task_id: str, timeout: float) -> tuple[asyncpg.Record, float]:
        return await self.wait(task_id, _TERMINAL, timeout=timeout)

    async def non_terminal(self) -> int:
        # Spelled out, so the planner matches the partial index on active rows.
        return int(await self.pool.fetchval(
            f"SELECT count(*) FROM tasks WHERE status IN ({_ACTIVE_SQL})"))

    async def scalar(self, sql: str, *args: Any) -> Any:
        return await self.pool.fetchval(sql, *args)
