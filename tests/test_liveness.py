"""Liveness against real processes, without a reaper: a worker's main process settles the
execution of a pool process that died under it at once, and a worker whose main process
is gone drops out of the status views within a heartbeat timeout."""

from __future__ import annotations

import asyncio
import json
import time

import psutil
import pytest

from shared.db import Db
from shared.settings import Settings
from shared.states import TaskStatus
from tests.fixtures_api import ApiClient
from tests.support import TERMINAL, row_where, submit_task, wait_for
from tests.test_ctl_helpers import arun_ctl

# A long run of real processes: `make test-slow` (CI runs it after `make test`).
pytestmark = pytest.mark.slow

# Well under the heartbeat timeout the reaper would need, with room for a busy machine.
SETTLED_WITHIN = 5.0


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return settings.with_(actor_modules="services.worker.actors,tests.actors")


async def test_a_pool_process_killed_mid_task_makes_its_row_lost_at_once(
        settings: Settings, db: Db, start_worker) -> None:
    # given a distill beating in a pool process, and no reaper at all
    worker = start_worker(concurrency=1)
    row = await submit_task(settings, db, "distill", {"chunks": 200, "chunk_seconds": 0.05})
    running = await row_where(db, row["id"], lambda r: r["status"] == "running" and r["done"] >= 2,
                              timeout=20, what="two chunks done")
    # when its pool process is killed with SIGKILL
    psutil.Process(running["pid"]).kill()
    killed_at = time.monotonic()
    # then the worker's main process records it lost, long before any heartbeat timeout
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL,
                            timeout=SETTLED_WITHIN + 10, what="row settled")
    took = time.monotonic() - killed_at
    print(f"pool process kill -9 -> row {final['status']} in {took:.2f}s")
    assert (final["status"], final["outcome"]) == ("lost", "gone"), dict(final)
    assert took < SETTLED_WITHIN, f"settled after {took:.2f}s"
    saved = await db.saved_chunks(row["id"])
    assert len(saved) >= 2 and saved == set(range(len(saved)))
    # and the worker runs the next task in the pool process that replaced the dead one
    after = await submit_task(settings, db, "distill", {"chunks": 2, "chunk_seconds": 0.01})
    ok = await row_where(db, after["id"], lambda r: r["status"] in TERMINAL, timeout=30,
                         what="next task")
    assert ok["status"] == "succeeded" and ok["pid"] != running["pid"]
    assert worker.proc is not None and worker.proc.poll() is None


async def test_a_killed_pool_process_of_an_auto_resume_actor_continues_at_once(
        settings: Settings, db: Db, start_worker) -> None:
    # given an actor allowed automatic resumes, a few chunks in, and no reaper
    start_worker(concurrency=1)
    row = await submit_task(settings, db, "resilient", {"chunks": 30, "chunk_seconds": 0.05})
    running = await row_where(db, row["id"], lambda r: r["status"] == "running" and r["done"] >= 5,
                              timeout=20, what="five chunks done")
    # when its pool process is killed
    psutil.Process(running["pid"]).kill()
    killed_at = time.monotonic()
    # then a new attempt starts from the checkpoint at once and completes every chunk once
    await row_where(db, row["id"], lambda r: r["attempt"] == 2, timeout=SETTLED_WITHIN + 10,
                    what="second attempt")
    took = time.monotonic() - killed_at
    print(f"pool process kill -9 -> second attempt in {took:.2f}s")
    assert took < SETTLED_WITHIN, f"resumed after {took:.2f}s"
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, timeout=30,
                            what="terminal")
    assert (final["status"], final["resumes"]) == (TaskStatus.SUCCEEDED, 1), dict(final)
    results = await db.list_results(row["id"])
    assert [r["chunk"] for r in results] == list(range(30))
    assert {r["attempt"] for r in results} == {1, 2}


async def test_a_worker_killed_with_sigkill_leaves_the_status_views(
        settings: Settings, start_worker, api: ApiClient) -> None:
    async def listed() -> list[str]:
        status = await (await api.get("/api/v1/system/status")).json()
        return [w["node"] for w in status["workers"]]

    # given a worker that has been up for longer than the heartbeat timeout
    worker = start_worker(concurrency=1)
    await asyncio.sleep(settings.heartbeat_timeout + 0.5)
    assert worker.node in await listed()
    # when its main process and its pool are killed with SIGKILL
    killed_at = time.monotonic()
    worker.kill()

    # then it leaves system/status within the heartbeat timeout
    async def gone() -> bool:
        return worker.node not in await listed()

    await wait_for(gone, timeout=settings.heartbeat_timeout + 5, interval=0.1,
                   what="worker to leave system/status")
    took = time.monotonic() - killed_at
    print(f"worker kill -9 -> gone from system/status in {took:.2f}s")
    assert took <= settings.heartbeat_timeout + 1.0, f"still listed after {took:.2f}s"
    # and from taskctl status, which says why
    out = await arun_ctl(settings, "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert worker.node not in [w["node"] for w in status["workers"]]
    assert any(worker.node in note for note in status["notes"]), status["notes"]
