"""What task code does to grow a tree: spawn children, and read them back.

A spawn writes the children in one transaction with the parent's row held, and, when it
names a chunk, that chunk's checkpoint too: a resumed parent skips the chunk (it is
saved) or, spawning again without one, gets the same child back (its spawn key is the
call's position in the code). A parent that is being stopped cannot spawn: the call
raises Cancelled, as its token would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from celery import Celery

from shared.token import Cancelled
from shared.trees import ChildSpec, ParentStopping, add_children, prepare

if TYPE_CHECKING:
    from services.worker.actor import Actor
    from services.worker.execution import Execution
    from services.worker.sidecar import Sidecar

# A spawn's transaction and its messages, bounded as the worker's other steps are.
SPAWN_TIMEOUT = 60.0
# Children read back per page.
PAGE = 1000


def _name(actor: Actor[Any, Any] | str) -> str:
    return actor if isinstance(actor, str) else actor.name


class Spawner:
    def __init__(self, sidecar: Sidecar, celery: Celery, ex: Execution) -> None:
        self._sc = sidecar
        self._celery = celery
        self._ex = ex
        # Spawns of this attempt in order: the key of a spawn that names no chunk.
        self._calls = 0

    def spawn(self, actor: Actor[Any, Any] | str, kwargs: Mapping[str, Any], *,
              chunk: int | None = None, checkpoint: Any = None, fail_fast: bool | None = None,
              queue: str | None = None) -> str:
        key = f"chunk:{chunk}" if chunk is not None else self._next_key()
        spec = ChildSpec(_name(actor), dict(kwargs), queue=queue, spawn_key=key,
                         fail_fast=self._fail_fast(actor, fail_fast))
        ids = self._add([spec], (chunk, checkpoint) if chunk is not None else None)
        return ids[key]

    def spawn_many(self, actor: Actor[Any, Any] | str, kwargs: Iterable[Mapping[str, Any]], *,
                   fail_fast: bool | None = None, queue: str | None = None) -> list[str]:
        specs = [ChildSpec(_name(actor), dict(k), queue=queue, spawn_key=self._next_key(),
                           fail_fast=self._fail_fast(actor, fail_fast)) for k in kwargs]
        if not specs:
            return []
        ids = self._add(specs, None)
        return [ids[s.spawn_key] for s in specs if s.spawn_key is not None]

    def children(self) -> list[dict[str, Any]]:
        """This task's children in the order they were made: id, actor, status, spawn key."""
        return self._sc.call(self._children(), timeout=SPAWN_TIMEOUT)

    def results(self, child_id: str) -> list[dict[str, Any]]:
        """One child's saved chunk results, in chunk order."""
        return self._sc.call(self._results(uuid.UUID(child_id)), timeout=SPAWN_TIMEOUT)

    # -- on the sidecar's loop --------------------------------------------------------

    def _next_key(self) -> str:
        key = f"call:{self._calls}"
        self._calls += 1
        return key

    @staticmethod
    def _fail_fast(actor: Actor[Any, Any] | str, given: bool | None) -> bool | None:
        """As asked, else the actor's own option (read from the catalogue by name)."""
        if given is not None or isinstance(actor, str):
            return given
        return actor.fail_fast

    def _add(self, specs: list[ChildSpec], checkpoint: tuple[int, Any] | None) -> dict[str, str]:
        ex = self._ex
        ex.token.raise_if_cancelled()
        try:
            ids = self._sc.call(self._write(specs, checkpoint), timeout=SPAWN_TIMEOUT)
        except ParentStopping as exc:
            raise Cancelled(ex.token.reason or "cancelled") from exc
        ex.spawned += len(specs)
        return ids

    async def _write(self, specs: list[ChildSpec], checkpoint: tuple[int, Any] | None
                     ) -> dict[str, str]:
        db = await self._sc.db()
        children = await prepare(db, specs)
        if checkpoint is not None and checkpoint[1] is None:
            checkpoint = (checkpoint[0], {"child": str(children[0].id)})
        added = await add_children(db, self._celery, self._sc.settings, self._ex.task_id,
                                   children, attempt=self._ex.attempt, checkpoint=checkpoint)
        return {str(k): str(v) for k, v in added.ids.items()}

    async def _children(self) -> list[dict[str, Any]]:
        db = await self._sc.db()
        out: list[dict[str, Any]] = []
        after = None
        while True:
            rows = await db.children_page(self._ex.task_id, after, PAGE)
            out.extend({"id": str(r["id"]), "actor": r["actor"], "status": r["status"],
                        "done": r["done"], "failed": r["failed"], "total": r["total"]}
                       for r in rows)
            if len(rows) < PAGE:
                return out
            after = (rows[-1]["created_at"], rows[-1]["id"])

    async def _results(self, child: uuid.UUID) -> list[dict[str, Any]]:
        db = await self._sc.db()
        return [{"chunk": r["chunk"], "ok": r["ok"], "result": r["result"]}
                for r in await db.list_results(child)]
