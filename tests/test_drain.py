"""A worker told to stop drains: its tasks go on on another worker from their checkpoints.

Real processes: two Celery prefork workers, PostgreSQL and Redis. The drained worker runs
two cooperative `distill` tasks and one `stubborn` task that never looks at its token.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.broker import make_celery
from shared.db import Db
from shared.settings import Settings
from tests.support import WorkerProcess, row_where, submit_task, wait_for

# A long run of real processes: `make test-slow` (CI runs it after `make test`).
pytestmark = pytest.mark.slow

GRACE = 5.0
# Over the grace: the bound the drain promises, plus a loaded machine's process exit.
EXIT_BOUND = GRACE + 2.0
CHUNKS = 40
CHUNK_SECONDS = 0.25


@pytest.fixture
def drain_settings(settings: Settings) -> Settings:
    return settings.with_(drain_grace=GRACE)


def _consume(settings: Settings, node: str, on: bool) -> None:
    """Starts or stops a worker's consumption of the default queue (Celery remote control)."""
    app = make_celery(settings)
    try:
        call = app.control.add_consumer if on else app.control.cancel_consumer
        replies = call(settings.default_queue, destination=[node], reply=True, timeout=5)
        assert replies, f"{node} did not answer"
    finally:
        app.close()


async def _running_on(db: Db, ids: list[uuid.UUID], node: str, timeout: float = 20.0) -> None:
    async def check() -> bool:
        rows = [await db.get_task(t) for t in ids]
        return all(r["status"] == "running" and r["worker"] == node and r["done"] >= 1
                   if r["actor"] == "distill" else r["status"] == "running" and r["worker"] == node
                   for r in rows)

    await wait_for(check, timeout=timeout, interval=0.05, what=f"tasks running on {node}")


async def _exited(worker: WorkerProcess, timeout: float) -> tuple[int, float]:
    """The worker's exit status and how long it took from now."""
    assert worker.proc is not None
    started = time.monotonic()
    rc = await asyncio.to_thread(worker.proc.wait, timeout)
    return rc, time.monotonic() - started


async def _events(settings: Settings) -> tuple[aioredis.Redis, Any]:
    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{settings.key_prefix}:events")
    return client, pubsub


async def _received(pubsub: Any, quiet: float = 0.5) -> list[dict[str, Any]]:
    """Every event received so far (until none came for `quiet` seconds)."""
    out = []
    last = time.monotonic()
    while time.monotonic() - last < quiet:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if msg is not None:
            out.append(json.loads(msg["data"]))
            last = time.monotonic()
    return out


def _restored(log_path: Path, task_id: uuid.UUID) -> int:
    """restored_chunks of the task's start on the worker that wrote this log."""
    for line in log_path.read_text(errors="replace").splitlines():
        if "task.started" in line and str(task_id) in line:
            found = re.search(r"restored_chunks[\"'=: ]+(\d+)", line)
            assert found, line
            return int(found.group(1))
    raise AssertionError(f"task {task_id} never started per {log_path}")


async def _went_on_elsewhere(db: Db, ids: list[uuid.UUID], other: WorkerProcess) -> None:
    """Every task ends `succeeded` on the other worker, attempt 2, each chunk saved once and
    none of the first attempt's chunks done again."""
    for task_id in ids:
        row = await row_where(db, task_id, lambda r: r["status"] in (
            "succeeded", "failed", "cancelled", "lost"), timeout=30.0, what="task finished")
        assert (row["status"], row["worker"], row["attempt"]) == ("succeeded", other.node, 2), \
            dict(row)
        if row["actor"] != "distill":
            continue
        results = await db.list_results(task_id)
        chunks = [r["chunk"] for r in results]
        assert sorted(chunks) == list(range(CHUNKS))  # every chunk exactly once
        first = sum(1 for r in results if r["attempt"] == 1)
        assert 0 < first < CHUNKS
        # the second attempt started from exactly what the first had saved
        assert _restored(other.log_path, task_id) == first


async def test_sigterm_drains_running_tasks_to_another_worker(
        drain_settings: Settings, db: Db, start_worker: Any) -> None:
    # given: two workers; the second takes nothing until the first runs all three tasks
    draining = start_worker(drain_settings, concurrency=3, wait=False)
    other = start_worker(drain_settings, concurrency=3, wait=False)
    draining.wait_ready()
    other.wait_ready()
    _consume(drain_settings, other.node, on=False)
    ids = [(await submit_task(drain_settings, db, "distill",
                              {"chunks": CHUNKS, "chunk_seconds": CHUNK_SECONDS}))["id"]
           for _ in range(2)]
    ids.append((await submit_task(drain_settings, db, "stubborn",
                                  {"seconds": 8, "mode": "sleep"}))["id"])
    await _running_on(db, ids, draining.node)
    _consume(drain_settings, other.node, on=True)
    client, pubsub = await _events(drain_settings)
    try:
        # when: SIGTERM to the worker's main process, as Kubernetes and docker stop send it
        os.kill(draining.pid, signal.SIGTERM)
        rc, took = await _exited(draining, EXIT_BOUND + 5)
        print(f"drained in {took:.2f}s (grace {GRACE}s)")
        # then: it left within the grace, cleanly
        assert rc == 0
        assert took < EXIT_BOUND
        # and: every task went on on the other worker from its checkpoint
        await _went_on_elsewhere(db, ids, other)
        events = await _received(pubsub)
    finally:
        await pubsub.aclose()
        await client.aclose()
    # and: the straggler was handed back by the worker (killed, then preempted)
    assert any(e["type"] == "task.preempted" and e["task_id"] == str(ids[2]) for e in events)
    log = draining.log_path.read_text(errors="replace")
    assert "worker.drain_killed" in log and "worker.drained" in log


async def _one_running_then_other_consumes(settings: Settings, db: Db, start_worker: Any
                                           ) -> tuple[WorkerProcess, WorkerProcess, uuid.UUID]:
    draining = start_worker(settings, concurrency=1, wait=False)
    other = start_worker(settings, concurrency=1, wait=False)
    draining.wait_ready()
    other.wait_ready()
    _consume(settings, other.node, on=False)
    task_id = (await submit_task(settings, db, "distill",
                                 {"chunks": CHUNKS, "chunk_seconds": CHUNK_SECONDS}))["id"]
    await _running_on(db, [task_id], draining.node)
    _consume(settings, other.node, on=True)
    return draining, other, task_id


async def test_drain_request_through_the_api(drain_settings: Settings, db: Db,
                                             start_worker: Any, api: Any,
                                             auth: dict[str, str]) -> None:
    # given: a worker running a task, another idle
    draining, other, task_id = await _one_running_then_other_consumes(drain_settings, db,
                                                                      start_worker)
    url = f"/api/v1/workers/{draining.node}/drain"
    # then: the request is a protected mutation, about workers that run
    assert (await api.post(url)).status == 401
    assert (await api.post("/api/v1/workers/nosuch@host/drain", headers=auth)).status == 404
    assert (await api.post("/api/v1/workers/bad%20name/drain", headers=auth)).status == 400
    # when
    resp = await api.post(url, headers=auth)
    # then: the worker and its pool process got it, and the worker leaves, cleanly
    assert resp.status == 202, await resp.text()
    reply = await resp.json()
    assert reply["node"] == draining.node and reply["receivers"] >= 2
    rc, took = await _exited(draining, EXIT_BOUND + 5)
    assert rc == 0 and took < EXIT_BOUND
    # and: its task goes on from the checkpoint on the other worker
    await _went_on_elsewhere(db, [task_id], other)


async def test_taskctl_drain_waits_for_the_worker_to_stop(drain_settings: Settings, db: Db,
                                                          start_worker: Any) -> None:
    from tests.test_ctl_helpers import arun_ctl

    # given
    worker = start_worker(drain_settings, concurrency=1)
    # when: the node named by a prefix of it
    done = await arun_ctl(drain_settings, "drain", worker.node.split("@")[0], "--json")
    # then
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert (reply["node"], reply["exited"], reply["running"]) == (worker.node, True, 0)
    rc, _ = await _exited(worker, 10)
    assert rc == 0
    # and: a node that is not running is refused as bad input
    missing = await arun_ctl(drain_settings, "drain", "nosuch@host")
    assert missing.returncode == 2 and "no running worker" in missing.stderr


async def test_a_second_signal_hurries_and_held_eta_messages_go_back(
        settings: Settings, db: Db, start_worker: Any) -> None:
    from shared.submit import submit

    # given: a long grace; the worker holds a task for later (countdown) and runs one that
    # never stops by itself; the other worker takes nothing yet
    patient = settings.with_(drain_grace=20.0)
    draining = start_worker(patient, concurrency=1, wait=False)
    other = start_worker(patient, concurrency=2, wait=False)
    draining.wait_ready()
    other.wait_ready()
    _consume(patient, other.node, on=False)
    celery = make_celery(patient)
    try:
        later = (await submit(db, celery, actor="distill", countdown=4.0,
                              kwargs={"chunks": 2, "chunk_seconds": 0.01}))["id"]
    finally:
        celery.close()
    await asyncio.sleep(1.0)  # taken and held until its time
    stuck = (await submit_task(patient, db, "stubborn", {"seconds": 30, "mode": "sleep"}))["id"]
    await _running_on(db, [stuck], draining.node)
    _consume(patient, other.node, on=True)
    # when: SIGTERM, and again
    os.kill(draining.pid, signal.SIGTERM)
    await asyncio.sleep(0.3)
    os.kill(draining.pid, signal.SIGTERM)
    rc, took = await _exited(draining, 15)
    # then: it did not wait for the grace
    assert rc == 0 and took < 5.0, took
    # and: the stuck task runs again on the other worker
    row = await row_where(db, stuck, lambda r: r["status"] == "running" and r["worker"] ==
                          other.node, timeout=10.0, what="stuck task running elsewhere")
    assert row["attempt"] == 2
    # and: the held message went back to the queue at once, not after the visibility timeout
    done = await row_where(db, later, lambda r: r["status"] == "succeeded", timeout=15.0,
                           what="the countdown task done")
    assert (done["worker"], done["attempt"]) == (other.node, 1)
