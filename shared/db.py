"""All PostgreSQL access: a thin class over an asyncpg pool with named queries.

Works behind PgBouncer in transaction mode: no statement cache, no session state.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import asyncpg

from shared.states import TaskStatus

Record = asyncpg.Record


class ClaimBusy(Exception):
    """Another writer holds the task's row: the claim did not wait, try again shortly."""


@cache
def queries() -> dict[str, str]:
    text = (resources.files("shared") / "sql" / "queries.sql").read_text()
    parts = re.split(r"^-- name: (\w+)\n", text, flags=re.MULTILINE)
    return {name: sql.strip() for name, sql in zip(parts[1::2], parts[2::2], strict=True)}


SERVER_SETTINGS = {"client_encoding": "UTF8"}


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: no code here keeps session state (PgBouncer-safe), and
    the default reset would cost a round trip on every use of the pool."""


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 10,
                      timeout: float = 5.0) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, statement_cache_size=0,
        init=_init_connection, reset=_keep_session, timeout=timeout, command_timeout=30,
        # Spelled as the server reports it: PgBouncer compares the two and would otherwise
        # send a SET before every transaction it hands over, doubling the server's work.
        server_settings=SERVER_SETTINGS,
    )


class Db:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.q = queries()

    @classmethod
    async def connect(cls, database_url: str, *, min_size: int = 1, max_size: int = 10) -> Db:
        return cls(await create_pool(database_url, min_size=min_size, max_size=max_size))

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    # -- submitting and reading -------------------------------------------------------

    async def insert_task(self, task_id: uuid.UUID, actor: str, queue: str, kwargs: dict[str, Any],
                          message_id: uuid.UUID, eta: datetime | None) -> Record:
        return await self.pool.fetchrow(self.q["insert_task"], task_id, actor, queue, kwargs,
                                        message_id, eta)

    async def delete_queued_task(self, task_id: uuid.UUID) -> None:
        await self.pool.execute(self.q["delete_queued_task"], task_id)

    async def get_task(self, task_id: uuid.UUID) -> Record | None:
        return await self.pool.fetchrow(self.q["get_task"], task_id)

    async def list_tasks(self, *, status: str | None, actor: str | None,
                         after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Record]:
        created, tid = after if after else (None, None)
        return await self.pool.fetch(self.q["list_tasks"], status, actor, created, tid, limit)

    async def list_results(self, task_id: uuid.UUID) -> list[Record]:
        return await self.pool.fetch(self.q["list_results"], task_id)

    async def saved_chunks(self, task_id: uuid.UUID) -> set[int]:
        return {r["chunk"] for r in await self.pool.fetch(self.q["saved_chunks"], task_id)}

    # -- the actor catalogue ----------------------------------------------------------

    async def upsert_actor(self, name: str, queue: str, params: dict[str, Any],
                           options: dict[str, Any]) -> None:
        await self.pool.execute(self.q["upsert_actor"], name, queue, params, options)

    async def get_actor(self, name: str) -> Record | None:
        return await self.pool.fetchrow(self.q["get_actor"], name)

    async def list_actors(self) -> list[Record]:
        return await self.pool.fetch(self.q["list_actors"])

    # -- execution (worker side, fenced by attempt) -----------------------------------

    async def claim_task(self, task_id: uuid.UUID, message_id: uuid.UUID, worker: str, pid: int,
                         lease_seconds: float, deadline: float = 10.0) -> Record | None:
        """The claimed row, or None when the task is not claimable: covered by a cancel fence
        (it was just ended as cancelled), finished, stale, already running, or reached after
        `deadline` seconds. Raises ClaimBusy when someone holds the row right now."""
        row = await self.pool.fetchrow(self.q["claim_task"], task_id, message_id, worker, pid,
                                       lease_seconds, deadline, timeout=deadline + 5.0)
        if row is None or row["fenced"]:
            return None
        if row["busy"]:
            raise ClaimBusy(f"task {task_id} is held by another writer")
        return row

    async def unclaim_task(self, task_id: uuid.UUID, message_id: uuid.UUID, worker: str,
                           pid: int) -> int | None:
        return await self.pool.fetchval(self.q["unclaim_task"], task_id, message_id, worker, pid)

    async def heartbeat(self, task_id: uuid.UUID, attempt: int, *, done: int, failed: int,
                        total: int | None, current: int | None, eta_seconds: float | None
                        ) -> Record | None:
        return await self.pool.fetchrow(self.q["heartbeat"], task_id, attempt, done, failed, total,
                                        current, eta_seconds)

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

    # -- cancellation -----------------------------------------------------------------

    async def insert_audit(self, conn: asyncpg.Connection, *, by: str, reason: str | None,
                           scope: dict[str, Any], forced: bool, cancelled: int, cancelling: int,
                           task_ids: Sequence[uuid.UUID]) -> Record:
        return await conn.fetchrow(self.q["insert_audit"], by, reason, scope, forced, cancelled,
                                   cancelling, list(task_ids))

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

    async def list_audit(self, limit: int = 50) -> list[Record]:
        return await self.pool.fetch(self.q["list_audit"], limit)

    # -- reaper -----------------------------------------------------------------------

    async def stale_executions(self, timeout: float) -> list[Record]:
        return await self.pool.fetch(self.q["stale_executions"], timeout)

    async def due_cancellations(self, margin: float) -> list[Record]:
        return await self.pool.fetch(self.q["due_cancellations"], margin)

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

    async def counts(self, *, history: bool = True) -> dict[str, int]:
        rows = await self.pool.fetch(self.q["all_counts" if history else "active_counts"])
        counts = {s.value: 0 for s in TaskStatus}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    async def active_rows(self) -> list[Record]:
        return await self.pool.fetch(self.q["active_rows"])

    async def active_queues(self) -> list[str]:
        return [r["queue"] for r in await self.pool.fetch(self.q["active_queues"])]

    async def force_kill_all(self, conn: asyncpg.Connection, *, reason: str, by: str,
                             remote_nodes: Sequence[str] = ()) -> list[Record]:
        """Ends every non-terminal row as cancelled, but for executions on `remote_nodes`
        (cancelled with force instead); inside the caller's transaction, after the fence
        lock that every cancel-all takes first (see `fence_lock` in queries.sql)."""
        await conn.execute(self.q["fence_lock"])
        return await conn.fetch(self.q["force_kill_all"], reason, by, list(remote_nodes))

    async def prune_history(self, days: int, limit: int = 1000) -> int:
        status = await self.pool.execute(self.q["prune_history"], days, limit)
        return int(status.split()[-1])

    async def prune_audit(self, days: int, limit: int = 1000) -> int:
        status = await self.pool.execute(self.q["prune_audit"], days, limit)
        fences = await self.pool.execute(self.q["prune_fences"], days)
        return int(status.split()[-1]) + int(fences.split()[-1])

    async def fold_tallies(self) -> None:
        await self.pool.execute(self.q["fold_tallies"])

    # -- cancel fences ----------------------------------------------------------------

    async def open_fences(self) -> list[Record]:
        return await self.pool.fetch(self.q["open_fences"])

    async def sweep_fence(self, fence: Record, batch: int,
                          conn: asyncpg.Connection | None = None) -> int:
        on = conn or self.pool
        status = await on.execute(
            self.q["sweep_fence"], fence["at"], fence["actor"], fence["queue"], fence["reason"],
            fence["by"], fence["forced"], batch)
        n = int(status.split()[-1])
        if n:
            await on.execute(self.q["fence_progress"], fence["id"], n)
        return n

    async def fence_swept(self, fence_id: int) -> None:
        await self.pool.execute(self.q["fence_swept"], fence_id)

    async def fence_purged(self, fence_id: int) -> None:
        await self.pool.execute(self.q["fence_purged"], fence_id)

    async def cancelling_among(self, ids: Sequence[uuid.UUID]) -> list[Record]:
        return await self.pool.fetch(self.q["cancelling_among"], list(ids))
