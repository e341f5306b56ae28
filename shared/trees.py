"""Job trees: children added to a parent, and a parent settled once its children ended.

A child is an ordinary task with a parent: it is claimed, run, cancelled and resumed like
any other. What a tree adds:
- children are written in one transaction that holds the parent's row (after the fence
  lock), so a subtree cancel either sees them or commits first and this sees the parent
  stopping; a spawn key makes a resumed parent's spawn give back the child it made before;
- a parent whose own code succeeded is `waiting`, holding no process; when the last of its
  children ended it is settled: `failed` if a child failed or was lost, else `queued` again
  to run its actor's `on_children_done` step, else `succeeded` (and then its own parent is
  looked at, up to the root);
- a child of a stopped ancestor never starts (the claim refuses it, see claim_task).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from celery import Celery

from shared.db import Db, NewChild, Record
from shared.errors import ParentStopping, TreeError, UnknownActor
from shared.settings import Settings
from shared.states import FAILS_PARENT, STOPS_CHILDREN, TERMINAL, CancelReason, TaskStatus
from shared.submit import Message, check_kwargs, publish, publish_many
from shared.tree_control import TreeControl

__all__ = ["Added", "ChildSpec", "ParentStopping", "TreeError", "add_children", "after_end",
           "check_parent", "prepare", "settle_up"]

log = structlog.get_logger("trees")


@dataclass(frozen=True)
class ChildSpec:
    actor: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    eta: datetime | None = None
    spawn_key: str | None = None
    # None: as the actor's option says.
    fail_fast: bool | None = None


@dataclass
class Added:
    """Children of one call: those made now, and those a spawn key found made before."""

    made: list[Record] = field(default_factory=list)
    existing: list[Record] = field(default_factory=list)

    @property
    def ids(self) -> dict[str | None, uuid.UUID]:
        return {r["spawn_key"]: r["id"] for r in [*self.existing, *self.made]}


async def prepare(db: Db, specs: Sequence[ChildSpec]) -> list[NewChild]:
    """Checks every child's actor and arguments before anything is written."""
    actors: dict[str, Record] = {}
    out = []
    for spec in specs:
        if spec.actor not in actors:
            row = await db.get_actor(spec.actor)
            if row is None:
                raise UnknownActor(spec.actor)
            actors[spec.actor] = row
        actor = actors[spec.actor]
        out.append(NewChild(id=uuid.uuid4(), actor=spec.actor, queue=spec.queue or actor["queue"],
                            kwargs=check_kwargs(actor, spec.kwargs), message_id=uuid.uuid4(),
                            eta=spec.eta, spawn_key=spec.spawn_key,
                            fail_fast=(spec.fail_fast if spec.fail_fast is not None
                                       else bool((actor["options"] or {}).get("fail_fast")))))
    return out


def check_parent(parent: Record | None, parent_id: uuid.UUID, attempt: int | None,
            settings: Settings, adding: int) -> None:
    if parent is None:
        raise TreeError("unknown_parent", f"no task {parent_id} to be the parent")
    status = TaskStatus(parent["status"])
    if attempt is not None and (parent["attempt"] != attempt or status in STOPS_CHILDREN):
        raise ParentStopping("parent_stopping", f"parent {parent_id} is {status}",
                             conflict=True)
    if status in TERMINAL:
        raise TreeError("parent_finished", f"parent {parent_id} already {status}",
                        conflict=True)
    if status is TaskStatus.CANCELLING:
        raise TreeError("parent_cancelling", f"parent {parent_id} is being cancelled",
                        conflict=True)
    if parent["child_failed_at"] is not None:
        raise TreeError("fail_fast", f"a child of {parent_id} failed and it fails fast",
                        conflict=True)
    if parent["depth"] + 1 > settings.tree_max_depth:
        raise TreeError("tree_too_deep",
                        f"a child of {parent_id} would be deeper than TREE_MAX_DEPTH="
                        f"{settings.tree_max_depth}")
    if parent["children"] + adding > settings.tree_max_children:
        raise TreeError("too_many_children",
                        f"{parent_id} has {parent['children']} children; {adding} more would "
                        f"pass TREE_MAX_CHILDREN={settings.tree_max_children}")


async def add_children(db: Db, celery: Celery, settings: Settings, parent_id: uuid.UUID,
                       children: Sequence[NewChild], *, attempt: int | None = None,
                       checkpoint: tuple[int, Any] | None = None) -> Added:
    """Writes `children` under `parent_id` and enqueues them. From a running parent's code
    (`attempt` given), a parent that is stopping raises ParentStopping, and `checkpoint`
    (chunk, result) is saved in the same transaction. A spawn key used before gives back
    that child (enqueued again, under the same message, if it is still queued)."""
    out = Added()
    async with db.transaction() as conn:
        parent = await db.lock_parent(conn, parent_id)
        check_parent(parent, parent_id, attempt, settings, 0)
        assert parent is not None
        out.made = await db.insert_children(conn, parent, children)
        keys = {c.spawn_key for c in children if c.spawn_key is not None}
        made_keys = {r["spawn_key"] for r in out.made}
        if keys - made_keys:
            out.existing = await db.existing_children(conn, parent_id, sorted(keys - made_keys))
        check_parent(parent, parent_id, attempt, settings, len(out.made))
        if out.made:
            await db.count_children(conn, parent_id, len(out.made))
        if checkpoint is not None and attempt is not None:
            await conn.fetchrow(db.q["save_result"], parent_id, attempt, checkpoint[0], True,
                                checkpoint[1])
    again = [r for r in out.existing if r["status"] == TaskStatus.QUEUED]
    messages = [Message(r["actor"], r["id"], r["message_id"], r["queue"], r["eta"],
                        r["queued_at"]) for r in [*out.made, *again]]
    if len(messages) == 1:
        m = messages[0]
        await publish(celery, m.actor, m.task_id, m.message_id, m.queue, m.eta,
                      queued_at=m.queued_at)
    elif messages:
        await publish_many(celery, messages)
    return out


async def has_hook(db: Db, actor: str) -> bool:
    row = await db.get_actor(actor)
    return bool(row is not None and (row["options"] or {}).get("on_children_done"))


async def settle_up(db: Db, celery: Celery, parent_id: uuid.UUID | None) -> list[Record]:
    """Settles `parent_id` if it waits and its children all ended, then its parent, and so
    on up the tree; returns the rows it moved. Safe to call any number of times from
    anywhere: the last child to end always finds its siblings ended (each is looked at
    after its own end committed), and the reaper calls it for any parent left waiting."""
    moved: list[Record] = []
    while parent_id is not None:
        probe = await db.settle_probe(parent_id)
        if probe is None or probe["status"] != TaskStatus.WAITING or probe["open"]:
            break
        # Asked before the transaction: a caller with one connection has no second to lend.
        hook = probe["children_done_at"] is None and await has_hook(db, probe["actor"])
        async with db.transaction() as conn:
            row = await db.lock_waiting(conn, parent_id)
            if row is None:
                break
            ended = await db.children_outcome(conn, parent_id)
            if ended["open"]:
                break
            hook = hook and row["children_done_at"] is None and ended["failed"] == 0
            settled = await db.settle(conn, parent_id, failed=int(ended["failed"]),
                                      message_id=uuid.uuid4(), run_hook=hook)
        if settled is None:
            break
        moved.append(settled)
        log.info("tree.settled", task_id=str(parent_id), status=settled["status"],
                 failed=ended["failed"], cancelled=ended["cancelled"],
                 succeeded=ended["succeeded"])
        if settled["status"] == TaskStatus.QUEUED:
            # Committed first: the claim of this message must find the row.
            await publish(celery, settled["actor"], settled["id"], settled["message_id"],
                          settled["queue"], settled["eta"], queued_at=settled["queued_at"])
            break
        parent_id = settled["parent_id"]
    return moved


async def after_end(trees: TreeControl, *, task_id: uuid.UUID, parent_id: uuid.UUID | None,
                    had_children: bool, ended: str) -> None:
    """What a tree does when one of its executions ended as `ended`: a parent now waiting
    may already be done; a parent whose own code failed takes its subtree down with it; a
    child's end may settle its parent, and a failed child of a `fail_fast` parent cancels
    its siblings first."""
    db, celery = trees.db, trees.celery
    if ended == TaskStatus.WAITING:
        await settle_up(db, celery, task_id)
    elif ended == TaskStatus.FAILED and had_children:
        await trees.cancel(task_id, by="tree", reason=CancelReason.PARENT_FAILED, force=False)
    if parent_id is None or ended not in TERMINAL:
        return
    if ended in FAILS_PARENT and await db.mark_child_failed(parent_id):
        await trees.cancel(parent_id, by="tree", reason=CancelReason.FAIL_FAST, force=False)
    await settle_up(db, celery, parent_id)
