"""`taskctl force-kill`: asks first, then leaves nothing of this deployment running or queued,
touches nothing that merely looks like a worker, and nothing it cancelled runs later."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pexpect
import psutil
import pytest
import redis.asyncio as aioredis

from shared.broker import make_celery
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from shared.submit import submit
from tests.support import wait_for, wait_gone
from tests.test_ctl_helpers import (
    alive,
    arun_ctl,
    deployment_workers,
    queue_lengths,
    rows_of,
    spawn_ctl,
    start_decoy,
    stop,
    unacked,
)

# A long run of real processes: `make test-slow` (CI runs it after `make test`).
pytestmark = pytest.mark.slow

QUEUES = ["default", "parked"]


@pytest.fixture
def celery(settings: Settings):
    app = make_celery(settings)
    yield app
    app.close()


def _tree(worker) -> set[int]:
    return {worker.pid, *(c.pid for c in psutil.Process(worker.pid).children(recursive=True))}


async def _busy_deployment(settings: Settings, db: Db, celery, start_worker, *,
                           concurrency: int = 2):
    """A worker with every pool process busy, messages prefetched, scheduled and queued,
    and messages in a queue no worker consumes. Returns the worker and the task ids."""
    worker = start_worker(concurrency=concurrency)
    ids = [(await submit(db, celery, actor="stubborn", kwargs={"seconds": 300}))["id"]]
    ids += [(await submit(db, celery, actor="distill",
                          kwargs={"chunks": 1000, "chunk_seconds": 0.1}))["id"]
            for _ in range(concurrency - 1)]

    async def running() -> bool:
        rows = [r for r in await db.active_rows() if r["id"] in ids]
        return sum(1 for r in rows if r["status"] == "running" and r["heartbeat_at"]) == len(ids)

    await wait_for(running, timeout=30, what="every pool process busy")
    ids += [(await submit(db, celery, actor="distill", kwargs={"chunks": 3}))["id"]
            for _ in range(4)]
    ids += [(await submit(db, celery, actor="distill", kwargs={"chunks": 3}, countdown=60))["id"]
            for _ in range(2)]
    ids += [(await submit(db, celery, actor="distill", kwargs={"chunks": 3}, queue="parked"))["id"]
            for _ in range(3)]
    await asyncio.sleep(0.5)  # let the worker prefetch what it will
    return worker, ids


async def _results_count(db: Db) -> int:
    return await db.pool.fetchval("SELECT count(*) FROM task_results")


async def _assert_cleared(settings: Settings, db: Db, redis: aioredis.Redis, pids: set[int],
                          ids: list[uuid.UUID], decoy_pid: int) -> None:
    # no worker process of this deployment is left on the host (zombies count as gone)
    assert all(await asyncio.gather(*(asyncio.to_thread(wait_gone, p, 5) for p in pids)))
    assert deployment_workers(settings) == set()
    # the look-alike was not touched
    assert alive(decoy_pid)
    # queues and Redis' unacked messages are empty
    assert await queue_lengths(redis, settings, QUEUES) == {q: 0 for q in QUEUES}
    assert await unacked(redis, settings) == (0, 0)
    # every row is terminal, ended the way force-kill says
    rows = await db.pool.fetch("SELECT status, outcome, attempt, cancel_reason, cancel_by "
                               "FROM tasks WHERE id = ANY($1::uuid[])", ids)
    assert len(rows) == len(ids) and {r["status"] for r in rows} == {"cancelled"}
    assert {(r["attempt"] > 0, r["outcome"]) for r in rows} == {(True, "killed"),
                                                                (False, "never_started")}
    assert {r["cancel_reason"] for r in rows} == {"force-kill"}
    assert all(r["cancel_by"].startswith("taskctl:") for r in rows)
    assert sum((await db.counts(history=False)).values()) == 0, "a row is still active"
    audit = (await db.list_audit(1))[0]
    assert audit["reason"] == "force-kill" and audit["forced"]
    assert set(audit["task_ids"]) >= set(ids)
    # the records of killed and dead workers on this host are gone, other hosts' stay
    keys = Keys(settings.key_prefix)
    assert set(await redis.hkeys(keys.workers)) == {"elsewhere@other-host"}
    assert await redis.zcard(keys.executions) == 0


async def _assert_nothing_runs_later(settings: Settings, db: Db, ids: list[uuid.UUID],
                                     start_worker) -> None:
    before = await rows_of(db, ids)
    results = await _results_count(db)
    start_worker(concurrency=2)
    await asyncio.sleep(2.0)
    assert await rows_of(db, ids) == before
    assert await _results_count(db) == results


async def _plant_fake_records(settings: Settings, redis: aioredis.Redis, decoy_pid: int) -> None:
    """Records that name the decoy's pid with another start time: a recycled pid."""
    keys = Keys(settings.key_prefix)
    started = psutil.Process(decoy_pid).create_time() - 1000
    await redis.hset(keys.workers, "recycled@" + settings.hostname, json.dumps(
        {"node": "recycled", "host": settings.hostname, "pid": decoy_pid,
         "pid_started": started, "concurrency": 1, "started_at": started}))
    await redis.hset(keys.workers, "elsewhere@other-host", json.dumps(
        {"node": "elsewhere", "host": "other-host", "pid": decoy_pid,
         "pid_started": psutil.Process(decoy_pid).create_time(), "concurrency": 1,
         "started_at": started}))


@asynccontextmanager
async def _busy_beside_a_decoy(
        settings: Settings, db: Db, redis: aioredis.Redis, celery, start_worker
) -> AsyncIterator[tuple[set[int], list[uuid.UUID], subprocess.Popen[bytes]]]:
    """A busy deployment whose every worker process taskctl finds, and beside it a decoy
    that records name with another start time or on another host. Yields the deployment's
    pids, its task ids and the decoy, which is stopped afterwards."""
    worker, ids = await _busy_deployment(settings, db, celery, start_worker)
    pids = _tree(worker)
    assert deployment_workers(settings) == pids
    decoy = start_decoy(settings)
    try:
        await _plant_fake_records(settings, redis, decoy.pid)
        yield pids, ids, decoy
    finally:
        stop(decoy)


async def test_force_kill_answered_no_changes_nothing(
        settings: Settings, db: Db, redis: aioredis.Redis, celery, start_worker) -> None:
    # given a busy worker, queued and parked messages, in a settled state
    worker, ids = await _busy_deployment(settings, db, celery, start_worker, concurrency=1)
    pids = _tree(worker)
    rows_before = await rows_of(db, ids)
    lengths_before = await queue_lengths(redis, settings, QUEUES)
    unacked_before = await unacked(redis, settings)
    assert lengths_before["parked"] == 3 and unacked_before[0] >= 1
    # when the operator answers "n" at the prompt
    session = spawn_ctl(settings, "force-kill")
    session.expect(r"Proceed\? \[y/N\]")
    assert "SIGKILL 2 worker processes" in session.before
    session.sendline("n")
    session.expect(pexpect.EOF)
    session.close()
    # then it says so, exits non-zero, and rows, processes and queues are as they were
    assert "nothing was changed" in session.before
    assert session.exitstatus == 1
    assert await rows_of(db, ids) == rows_before
    assert _tree(worker) == pids and all(alive(p) for p in pids)
    assert await queue_lengths(redis, settings, QUEUES) == lengths_before
    assert await unacked(redis, settings) == unacked_before
    worker.kill()  # its stubborn task would hold a graceful stop for the full timeout


async def test_force_kill_answered_yes_clears_this_host_and_spares_a_decoy(
        settings: Settings, db: Db, redis: aioredis.Redis, celery, start_worker) -> None:
    async with _busy_beside_a_decoy(settings, db, redis, celery, start_worker) as (
            pids, ids, decoy):
        active = sum((await db.counts(history=False)).values())
        # when the operator answers "y"
        session = spawn_ctl(settings, "force-kill")
        session.expect(r"Proceed\? \[y/N\]")
        session.sendline("y")
        session.expect(pexpect.EOF, timeout=60)
        session.close()
        output = session.before
        assert session.exitstatus == 0, output
        # then it reports what it did and the status afterwards
        assert f"cancelled {active} rows" in output
        assert "Taskreaper status" in output
        await _assert_cleared(settings, db, redis, pids, ids, decoy.pid)


async def test_force_kill_with_force_asks_nothing_and_nothing_runs_again(
        settings: Settings, db: Db, redis: aioredis.Redis, celery, start_worker) -> None:
    async with _busy_beside_a_decoy(settings, db, redis, celery, start_worker) as (
            pids, ids, decoy):
        # when force-kill runs without a terminal and with --force
        done = await arun_ctl(settings, "force-kill", "--force")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Proceed" not in done.stdout
        log = (Path(settings.log_dir) / "taskctl.log").read_text()
        assert '"taskctl.force_kill"' in log and "force-kill" in log
        await _assert_cleared(settings, db, redis, pids, ids, decoy.pid)
        # and a new worker starts: nothing that was cancelled runs
        await _assert_nothing_runs_later(settings, db, ids, start_worker)
