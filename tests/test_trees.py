"""Job trees with real worker processes: a root spawns children, the tree is cancelled, paused
and resumed as one, a failed child stops its siblings in a fail-fast tree, a killed worker's
children resume, and children spawned while the root is cancelled never run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.cancellation import Canceller
from shared.db import Db
from shared.settings import Settings
from tests.support import TERMINAL, row_where, submit_task, wait_for

# Through PgBouncer in transaction pooling mode, as deployed.
pytestmark = pytest.mark.pgbouncer

BY = "test"


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return settings.with_(actor_modules="services.worker.actors,tests.actors")


def status_is(*states: str) -> Callable[[Any], bool]:
    return lambda r: r["status"] in states


async def children_of(db: Db, root: uuid.UUID) -> list[Any]:
    return await db.pool.fetch(
        "SELECT id, status, attempt, started_at, done, outcome, cancel_reason FROM tasks "
        "WHERE parent_id = $1 ORDER BY created_at, id", root)


async def all_children(db: Db, root: uuid.UUID, n: int, predicate: Callable[[Any], bool],
                       timeout: float, what: str) -> list[Any]:
    async def check() -> list[Any] | None:
        rows = await children_of(db, root)
        return rows if len(rows) == n and all(predicate(r) for r in rows) else None

    return await wait_for(check, timeout=timeout, what=what, interval=0.1)


async def chunk_counts(redis: aioredis.Redis, settings: Settings, db: Db,
                       root: uuid.UUID) -> dict[str, int]:
    """How many times each (child, chunk) of the root's was done, as the leaves counted."""
    ids = {str(r["id"]) for r in await children_of(db, root)}
    out = {}
    async for key in redis.scan_iter(match=f"{settings.key_prefix}:test:done:*", count=1000):
        if key.split(":")[-2] in ids:
            out[key] = int(await redis.get(key))
    return out


async def db_clock(db: Db) -> Any:
    return await db.pool.fetchval("SELECT clock_timestamp()")


@pytest.mark.slow
async def test_a_root_of_200_children_cancelled_and_resumed_does_each_chunk_once(
        settings: Settings, db: Db, redis: aioredis.Redis, start_worker: Any,
        canceller: Canceller) -> None:
    # given a root that spawned 200 children, four of them running at a time
    start_worker(concurrency=4)
    root = (await submit_task(settings, db, "tree_root",
                              {"children": 200, "chunks": 3, "chunk_seconds": 0.1}))["id"]
    await row_where(db, root, status_is("waiting"), 60, "all 200 spawned")
    await wait_for(lambda: db.pool.fetchval(
        "SELECT count(*) >= 12 FROM tasks WHERE parent_id = $1 AND status = 'succeeded'", root),
        timeout=60, what="a dozen children done")
    running = await db.pool.fetch("SELECT id FROM tasks WHERE parent_id = $1 AND "
                                  "status = 'running' AND done > 0", root)

    # when the root is cancelled
    out = await canceller.cancel(root, by=BY, reason="stop the job")
    answered = await db_clock(db)

    # then every child ends, none started after the answer, and the running ones kept
    # their saved chunks
    assert out.changed
    rows = await all_children(db, root, 200, status_is(*TERMINAL), 2 * settings.cancel_grace + 5,
                              "every child terminal")
    assert {r["status"] for r in rows} <= {"succeeded", "cancelled"}
    late = [r["id"] for r in rows if r["started_at"] is not None and r["started_at"] > answered]
    assert late == []
    cancelled = [r for r in rows if r["status"] == "cancelled"]
    assert len(cancelled) >= 150
    for r in running:
        saved = await db.pool.fetchval("SELECT count(*) FROM task_results WHERE task_id = $1",
                                       r["id"])
        child = await db.get_task(r["id"])
        assert saved == child["done"] >= 1
    assert (await row_where(db, root, status_is(*TERMINAL), 10, "root"))["status"] == "cancelled"
    audit = await db.pool.fetchrow("SELECT * FROM cancel_audit WHERE scope->>'tree' = $1",
                                   str(root))
    assert audit is not None and audit["cancelled"] + audit["cancelling"] == len(
        [r for r in rows if r["cancel_reason"] == "stop the job"])

    # when the root is resumed
    await canceller.resume(root, by=BY)

    # then the whole tree completes, its merge step sees every chunk, each done once
    done = await row_where(db, root, status_is(*TERMINAL), 120, "root finished")
    assert done["status"] == "succeeded"
    merged = await db.pool.fetchval(
        "SELECT result->>'merged' FROM task_results WHERE task_id = $1 AND chunk = 1000000", root)
    assert int(merged) == 600
    counts = await chunk_counts(redis, settings, db, root)
    assert len(counts) == 600 and set(counts.values()) == {1}


async def test_cancelling_one_child_leaves_its_siblings_running(
        settings: Settings, db: Db, start_worker: Any, canceller: Canceller) -> None:
    # given a root with five children
    start_worker()
    root = (await submit_task(settings, db, "tree_root",
                              {"children": 5, "chunks": 3, "chunk_seconds": 0.3}))["id"]
    first = await wait_for(lambda: db.pool.fetchval(
        "SELECT id FROM tasks WHERE parent_id = $1 AND status = 'running' LIMIT 1", root),
        timeout=20, what="a child running")

    # when that one child is cancelled
    await canceller.cancel(first, by=BY)

    # then it alone ends cancelled; the others and the root succeed
    done = await row_where(db, root, status_is(*TERMINAL), 40, "root finished")
    rows = await children_of(db, root)
    assert done["status"] == "succeeded"
    assert {r["id"]: r["status"] for r in rows if r["id"] != first} == {
        r["id"]: "succeeded" for r in rows if r["id"] != first}
    assert (await db.get_task(first))["status"] == "cancelled"


async def test_a_failed_child_of_a_fail_fast_root_cancels_its_siblings_and_fails_the_root(
        settings: Settings, db: Db, start_worker: Any) -> None:
    # given a fail-fast root whose fourth child fails at once
    start_worker()
    root = (await submit_task(settings, db, "strict_root",
                              {"children": 8, "chunks": 6, "chunk_seconds": 0.3,
                               "fail_child": 3}))["id"]

    # then the failure cancels every sibling still unfinished, and the root fails
    done = await row_where(db, root, status_is(*TERMINAL), 30, "root finished")
    assert done["status"] == "failed"
    rows = await children_of(db, root)
    statuses = {r["status"] for r in rows}
    assert "failed" in statuses and "cancelled" in statuses
    assert all(r["status"] in TERMINAL for r in rows)
    assert {r["cancel_reason"] for r in rows if r["status"] == "cancelled"} == {"fail_fast"}
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    assert len(succeeded) < 7


@pytest.mark.slow
async def test_a_worker_killed_under_an_auto_resume_tree_the_tree_still_completes(
        settings: Settings, db: Db, redis: aioredis.Redis, start_worker: Any,
        start_reaper: Any) -> None:
    # given a root waiting for ten auto-resuming children, some running on worker A
    first = start_worker()
    start_reaper()
    root = (await submit_task(settings, db, "tree_root",
                              {"children": 10, "chunks": 5, "chunk_seconds": 0.3,
                               "leaf_actor": "sturdy_leaf"}))["id"]
    await row_where(db, root, status_is("waiting"), 20, "root waiting")
    await wait_for(lambda: db.pool.fetchval(
        "SELECT count(*) >= 2 FROM tasks WHERE parent_id = $1 AND status = 'running' "
        "AND done >= 1", root), timeout=20, what="children running")

    # when worker A is killed with SIGKILL and worker B takes over
    first.kill()
    start_worker()

    # then the lost children are resumed from their checkpoints and the tree completes
    done = await row_where(db, root, status_is(*TERMINAL), 90, "root finished")
    assert done["status"] == "succeeded"
    rows = await children_of(db, root)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert any(r["attempt"] > 1 for r in rows)
    # every chunk done (one the kill cut short, before its save, may have been begun twice)
    counts = await chunk_counts(redis, settings, db, root)
    assert len(counts) == 50
    saved = await db.pool.fetchval(
        "SELECT count(*) FROM task_results r JOIN tasks t ON t.id = r.task_id "
        "WHERE t.parent_id = $1 AND r.ok", root)
    assert saved == 50


async def test_children_spawned_while_the_root_is_cancelled_never_run(
        settings: Settings, db: Db, start_worker: Any, canceller: Canceller) -> None:
    # given a root spawning children slowly onto a queue no worker reads yet
    start_worker()
    root = (await submit_task(settings, db, "tree_root",
                              {"children": 40, "queue": "parked", "pace": 0.05}))["id"]
    await wait_for(lambda: db.pool.fetchval(
        "SELECT count(*) >= 5 FROM tasks WHERE parent_id = $1", root), timeout=20,
        what="children spawned")

    # when the root is cancelled mid-spawn, then a worker for that queue starts
    await canceller.cancel(root, by=BY)
    await row_where(db, root, status_is(*TERMINAL), 10, "root stopped")
    start_worker(settings.with_(worker_queues="parked"))
    await asyncio.sleep(2.0)

    # then the root stopped spawning, and no child ever ran
    rows = await children_of(db, root)
    assert 5 <= len(rows) < 40
    assert all(r["status"] == "cancelled" and r["attempt"] == 0 for r in rows), rows
    assert (await db.get_task(root))["status"] == "cancelled"


async def test_distill_in_batches_spawns_them_and_merges_their_digests(
        settings: Settings, db: Db, start_worker: Any) -> None:
    # given the guide's big job split as it advises: 12 chunks in 3 batches
    start_worker()
    root = (await submit_task(settings, db, "distill",
                              {"chunks": 12, "batches": 3, "chunk_seconds": 0.05}))["id"]

    # then three child distills do four chunks each, and the parent merges them
    done = await row_where(db, root, status_is(*TERMINAL), 40, "distill finished")
    assert done["status"] == "succeeded" and done["children"] == 3
    rows = await children_of(db, root)
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    assert [r["done"] for r in rows] == [4, 4, 4]
    merged = await db.pool.fetchval(
        "SELECT result FROM task_results WHERE task_id = $1 AND chunk = 3", root)
    assert merged["batches"] == 3 and merged["chunks"] == 12 and merged["terms"]


@pytest.mark.slow
async def test_a_paused_tree_holds_every_child_and_its_resume_finishes_each_chunk_once(
        settings: Settings, db: Db, redis: aioredis.Redis, start_worker: Any,
        canceller: Canceller) -> None:
    from shared.pausing import Pauser

    # given a root waiting for twelve children, two of them running
    start_worker()
    root = (await submit_task(settings, db, "tree_root",
                              {"children": 12, "chunks": 4, "chunk_seconds": 0.4}))["id"]
    await row_where(db, root, status_is("waiting"), 20, "root waiting")
    await wait_for(lambda: db.pool.fetchval(
        "SELECT count(*) >= 2 FROM tasks WHERE parent_id = $1 AND status = 'running' "
        "AND done >= 1", root), timeout=20, what="children running")

    # when the root is paused
    pauser = Pauser(settings, db, canceller.redis, canceller.celery)
    out = await pauser.pause(root, by=BY, reason="maintenance")

    # then every unfinished child is paused (the running ones within their grace), the root
    # still waits, and nothing runs
    assert out.changed
    rows = await all_children(db, root, 12, status_is("paused", "succeeded"),
                              2 * settings.cancel_grace + 5, "children paused")
    paused = [r for r in rows if r["status"] == "paused"]
    assert any(r["done"] > 0 for r in paused), "a running child paused with its chunks"
    assert any(r["attempt"] == 0 for r in paused), "a queued child paused before it ran"
    await asyncio.sleep(1.0)
    assert {r["status"] for r in await children_of(db, root)} <= {"paused", "succeeded"}
    assert (await db.get_task(root))["status"] == "waiting"

    # when it is resumed, the tree completes and no chunk was done twice
    await canceller.resume(root, by=BY)
    done = await row_where(db, root, status_is(*TERMINAL), 60, "root finished")
    assert done["status"] == "succeeded"
    counts = await chunk_counts(redis, settings, db, root)
    assert len(counts) == 48 and set(counts.values()) == {1}
