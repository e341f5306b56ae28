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

GRACE = 3.0
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
