"""Job trees: adding children, settling a waiting parent, a subtree's stop and resume, and
what the tree view reads (shared/sql/trees.sql).

Methods that take `conn` run inside the caller's transaction (`Db.transaction()`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.db.base import DbBase, Record


@dataclass(frozen=True)
class NewChild:
    """One child to insert: the ids are made by the caller (the message id is the one it
    publishes once the row is committed)."""

    id: uuid.UUID
    actor: str
    queue: str
    kwargs: dict[str, Any]
    message_id: uuid.UUID
    eta: datetime | None = None
    spawn_key: str | None = None
    fail_fast: bool = False


class TreeQueries(DbBase):
    # -- adding children (one transaction: lock the parent, insert, count) -------------

    async def lock_parent(self, conn: asyncpg.Connection, parent_id: uuid.UUID) -> Record | None:
        """The parent's row, held until the transaction ends, after the fence lock."""
        return await conn.fetchrow(self.q["tree_lock_parent"], parent_id)

    async def insert_children(self, conn: asyncpg.Connection, parent: Mapping[str, Any],
                              children: Sequence[NewChild]) -> list[Record]:
        """Inserts the children of `parent` (a `lock_parent` row); a spawn key the parent
        already used inserts nothing. Returns the rows made."""
        cols: list[list[Any]] = [[], [], [], [], [], [], [], []]
        for c in children:
            for col, value in zip(cols, (c.id, c.actor, c.queue, c.kwargs, c.message_id, c.eta,
                                         c.spawn_key, c.fail_fast), strict=True):
                col.append(value)
        return await conn.fetch(self.q["tree_insert_children"], parent["id"], parent["root_id"],
                                parent["depth"] + 1, *cols)

    async def existing_children(self, conn: asyncpg.Connection, parent_id: uuid.UUID,
                                keys: Sequence[str]) -> list[Record]:
        return await conn.fetch(self.q["tree_existing_children"], parent_id, list(keys))

    async def count_children(self, conn: asyncpg.Connection, parent_id: uuid.UUID,
                             added: int) -> int:
        return int(await conn.fetchval(self.q["tree_count_children"], parent_id, added))

    async def delete_new_tasks(self, ids: Sequence[uuid.UUID],
                               counted: dict[uuid.UUID, int]) -> None:
        """Undoes a batch whose messages could not be sent: its rows, and the children it
        counted on parents that existed before it."""
        async with self.transaction() as conn:
            await conn.execute(self.q["tree_delete_new"], list(ids))
            for parent, n in counted.items():
                await conn.execute(self.q["tree_uncount_children"], parent, n)

    async def mark_child_failed(self, parent_id: uuid.UUID) -> bool:
        """Records a failed child on a `fail_fast` parent; False when it is not one."""
        return await self.pool.fetchval(self.q["tree_mark_child_failed"], parent_id) is not None

    # -- settling a waiting parent -----------------------------------------------------

    async def settle_probe(self, parent_id: uuid.UUID) -> Record | None:
        return await self.pool.fetchrow(self.q["tree_settle_probe"], parent_id)

    async def lock_waiting(self, conn: asyncpg.Connection, parent_id: uuid.UUID) -> Record | None:
        return await conn.fetchrow(self.q["tree_lock_waiting"], parent_id)

    async def children_outcome(self, conn: asyncpg.Connection, parent_id: uuid.UUID) -> Record:
        return await conn.fetchrow(self.q["tree_children_outcome"], parent_id)

    async def settle(self, conn: asyncpg.Connection, parent_id: uuid.UUID, *, failed: int,
                     message_id: uuid.UUID, run_hook: bool) -> Record | None:
        return await conn.fetchrow(self.q["tree_settle"], parent_id, failed, message_id,
                                   run_hook)

    async def waiting_settled(self, limit: int) -> list[uuid.UUID]:
        return [r["id"] for r in await self.pool.fetch(self.q["tree_waiting_settled"], limit)]

    async def orphaned_parents(self, limit: int) -> list[uuid.UUID]:
        return [r["id"] for r in await self.pool.fetch(self.q["tree_orphaned"], limit)]

    # -- a subtree's stop and resume (after the fence lock) ----------------------------

    async def cancel_subtree(self, conn: asyncpg.Connection, node: uuid.UUID, *,
                             root: uuid.UUID, reason: str | None, by: str, forced: bool,
                             grace: float) -> list[Record]:
        """The executions under `node` to `cancelling`, its waiting parents `cancelled`."""
        return await conn.fetch(self.q["tree_subtree_cancel"], node, reason, by, forced, grace,
                                root)

    async def sweep_subtree(self, node: uuid.UUID, *, root: uuid.UUID, reason: str | None,
                            by: str, forced: bool, limit: int) -> int:
        """Up to `limit` never-started nodes under `node` to `cancelled`; how many."""
        if node == root:
            status = await self.pool.execute(self.q["tree_sweep_root"], node, reason, by, forced,
                                             limit)
        else:
            status = await self.pool.execute(self.q["tree_sweep_subtree"], node, reason, by,
                                             forced, limit)
        return int(status.split()[-1])

    async def root_of(self, node: uuid.UUID) -> uuid.UUID:
        root = await self.pool.fetchval(self.q["tree_root_of"], node)
        return root if root is not None else node

    async def audit_add_cancelled(self, audit_id: int, n: int) -> None:
        await self.pool.execute(self.q["audit_add_cancelled"], audit_id, n)

    async def pause_subtree(self, conn: asyncpg.Connection, node: uuid.UUID, *,
                            reason: str | None, by: str, grace: float) -> list[Record]:
        return await conn.fetch(self.q["tree_subtree_pause"], node, reason, by, grace)

    async def resume_subtree(self, conn: asyncpg.Connection, node: uuid.UUID) -> list[Record]:
        rows = await conn.fetch(self.q["tree_subtree_resume"], node)
        await conn.execute(self.q["tree_reset_node"], node)
        return rows

    async def resume_subtree_pausing(self, conn: asyncpg.Connection,
                                     node: uuid.UUID) -> list[Record]:
        return await conn.fetch(self.q["tree_subtree_resume_pausing"], node)

    async def cancel_waiting(self, conn: asyncpg.Connection, *, actor: str | None,
                             queue: str | None, reason: str | None, by: str,
                             forced: bool) -> list[uuid.UUID]:
        """cancel-all's waiting side (after the fence lock): parents in scope end now."""
        rows = await conn.fetch(self.q["cancel_all_waiting"], actor, queue, reason, by, forced)
        return [r["id"] for r in rows]

    # -- reading a tree ----------------------------------------------------------------

    async def tree_aggregate(self, node: uuid.UUID) -> list[Record]:
        return await self.pool.fetch(self.q["tree_aggregate"], node)

    async def children_page(self, node: uuid.UUID, after: tuple[datetime, uuid.UUID] | None,
                            limit: int) -> list[Record]:
        at, last = after if after is not None else (None, None)
        return await self.pool.fetch(self.q["tree_children_page"], node, at, last, limit)

    async def active_roots(self, limit: int) -> list[uuid.UUID]:
        return [r["root"] for r in await self.pool.fetch(self.q["tree_active_roots"], limit)]

    async def ancestors(self, node: uuid.UUID) -> list[Record]:
        return await self.pool.fetch(self.q["tree_ancestors"], node)
