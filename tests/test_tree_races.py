"""Tree writers racing each other on PostgreSQL: a spawn against its parent's cancel, the
last children of a parent ending together, a subtree cancel against cancel-all."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from celery import Celery

from shared.cancellation import Canceller
from shared.db import Db
from shared.errors import TreeError
from shared.settings import Settings
from shared.states import TaskStatus
from shared.trees import ChildSpec, add_children, prepare, settle_up
from tests.fixtures_api import set_status

BY = "race"


async def _running_parent(db: Db) -> uuid.UUID:
    tid = uuid.uuid4()
    await db.upsert_actor("distill", "default", {}, {})
    await db.insert_task(tid, "distill", "default", {}, uuid.uuid4(), None)
    await set_status(db, tid, "running", attempt=1,
                     started_at=await db.pool.fetchval("SELECT now()"), worker="w@x", pid=1)
    return tid


async def _spawn(db: Db, celery: Celery, settings: Settings, parent: uuid.UUID, n: int) -> int:
    specs = [ChildSpec("distill", {}, queue="nowhere", spawn_key=f"k{i}") for i in range(n)]
    try:
        added = await add_children(db, celery, settings, parent, await prepare(db, specs),
                                   attempt=1)
    except TreeError:
        return 0
    return len(added.made)


@pytest.mark.parametrize("round_", range(12))
async def test_a_spawn_racing_its_parents_cancel_leaves_no_child_to_run(
        settings: Settings, db: Db, canceller: Canceller, round_: int) -> None:
    # given a running parent
    parent = await _running_parent(db)
    # when it spawns 40 children while it is cancelled, the two started together
    spawn = asyncio.create_task(_spawn(db, canceller.celery, settings, parent, 40))
    await asyncio.sleep(0.0005 * round_)
    await canceller.cancel(parent, by=BY)
    made = await spawn
    # then every child that exists is cancelled: none is left queued to run
    rows = await db.pool.fetch("SELECT status FROM tasks WHERE parent_id = $1", parent)
    assert len(rows) == made
    assert {r["status"] for r in rows} <= {"cancelled"}


async def test_the_last_children_ending_together_settle_their_parent(
        settings: Settings, db: Db, canceller: Canceller) -> None:
    # given a waiting parent with 30 children, all running
    parent = await _running_parent(db)
    await _spawn(db, canceller.celery, settings, parent, 30)
    await set_status(db, parent, "waiting")
    kids = [r["id"] for r in await db.pool.fetch(
        "SELECT id FROM tasks WHERE parent_id = $1", parent)]
    for k in kids:
        await set_status(db, k, "running", attempt=1, worker="w@x", pid=2,
                         started_at=await db.pool.fetchval("SELECT now()"))

    # when they all end at once, each then looking at the parent
    async def end(k: uuid.UUID) -> None:
        await db.finish_task(k, 1, TaskStatus.SUCCEEDED)
        await settle_up(db, canceller.celery, parent)

    await asyncio.gather(*(end(k) for k in kids))

    # then one of them found its siblings ended and settled the parent: it is not left
    # waiting with nothing to wake it
    row = await db.get_task(parent)
    assert row["status"] == "succeeded"


async def test_a_subtree_cancel_and_cancel_all_at_once_never_deadlock(
        settings: Settings, db: Db, canceller: Canceller) -> None:
    # given ten parents, each with ten running children
    parents = [await _running_parent(db) for _ in range(10)]
    for p in parents:
        await _spawn(db, canceller.celery, settings, p, 10)
        for r in await db.pool.fetch("SELECT id FROM tasks WHERE parent_id = $1", p):
            await set_status(db, r["id"], "running", attempt=1, worker="w@x", pid=3,
                             started_at=await db.pool.fetchval("SELECT now()"))
    # when every parent's cancel and a cancel-all run at the same time
    await asyncio.wait_for(asyncio.gather(
        *(canceller.cancel(p, by=BY) for p in parents),
        canceller.cancel_all(by=BY)), timeout=30)
    # then everything is being cancelled, and nothing failed with a deadlock
    left = await db.pool.fetchval(
        "SELECT count(*) FROM tasks WHERE status IN ('running', 'queued', 'waiting')")
    assert left == 0


async def test_the_reaper_settles_a_parent_left_waiting_and_cancels_orphans(
        settings: Settings, db: Db, canceller: Canceller) -> None:
    from types import SimpleNamespace

    from services.reaper.trees import Trees

    # given a parent left waiting after its children ended (nobody looked at it), and a
    # cancelled parent with a child still queued (its subtree cancel never ran)
    waiting = await _running_parent(db)
    await _spawn(db, canceller.celery, settings, waiting, 3)
    await db.pool.execute("UPDATE tasks SET status = 'succeeded' WHERE parent_id = $1", waiting)
    await set_status(db, waiting, "waiting")
    stopped = await _running_parent(db)
    await _spawn(db, canceller.celery, settings, stopped, 2)
    await set_status(db, stopped, "cancelled")

    # when the reaper's tree rule runs
    ctx = SimpleNamespace(settings=settings, db=db, redis=canceller.redis,
                          celery=SimpleNamespace(celery=canceller.celery))
    found = await Trees().run(ctx, None)  # type: ignore[arg-type]

    # then the waiting parent is settled and the orphans are cancelled
    assert found == 3
    assert (await db.get_task(waiting))["status"] == "succeeded"
    kids = await db.pool.fetch("SELECT status, cancel_reason FROM tasks WHERE parent_id = $1",
                               stopped)
    assert [(k["status"], k["cancel_reason"]) for k in kids] == [
        ("cancelled", "parent_cancelled")] * 2


async def test_a_busy_tree_logs_its_heartbeat_counted_over_every_node(
        settings: Settings, db: Db, canceller: Canceller) -> None:
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from services.reaper.trees import Trees

    # given a root waiting for three children that saved 2 of 4 chunks each, one running
    root = await _running_parent(db)
    await _spawn(db, canceller.celery, settings, root, 3)
    await set_status(db, root, "waiting", done=3, total=3)
    await db.pool.execute("UPDATE tasks SET done = 2, total = 4, started_at = now() - "
                          "interval '10 seconds' WHERE parent_id = $1", root)
    child = await db.pool.fetchval("SELECT id FROM tasks WHERE parent_id = $1 LIMIT 1", root)
    await set_status(db, child, "running", attempt=1, worker="w@x", pid=5)

    # when the reaper passes twice, one log interval apart
    ctx = SimpleNamespace(settings=settings.with_(heartbeat_log_interval=0.05), db=db,
                          redis=canceller.redis, celery=SimpleNamespace(celery=canceller.celery))
    rule = Trees()
    with capture_logs() as logs:
        await rule.run(ctx, None)  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        await rule.run(ctx, None)  # type: ignore[arg-type]

    # then the root's line counts the chunks of the whole tree
    lines = [e for e in logs if e["event"] == "tree.heartbeat" and e["task_id"] == str(root)]
    assert len(lines) == 1
    assert (lines[0]["done"], lines[0]["total"], lines[0]["nodes"]) == (9, 15, 4)
    assert "💓 heartbeat - tree of 4 tasks" in lines[0]["summary"]


async def test_cancelling_a_tree_twice_audits_it_once(
        settings: Settings, db: Db, canceller: Canceller) -> None:
    # given a running parent with three queued children, cancelled
    parent = await _running_parent(db)
    await _spawn(db, canceller.celery, settings, parent, 3)
    await canceller.cancel(parent, by=BY)
    # when it is cancelled again
    again = await canceller.cancel(parent, by=BY)
    # then nothing more happened, and the subtree has one audit row with its three children
    assert not again.changed
    rows = await db.pool.fetch("SELECT cancelled, cancelling FROM cancel_audit "
                               "WHERE scope->>'tree' = $1", str(parent))
    assert [(r["cancelled"], r["cancelling"]) for r in rows] == [(3, 0)]
