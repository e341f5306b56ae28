"""The resource guard against real worker processes: an actor's memory limit cancels
through the ladder, and each running task's RSS and CPU reach its row and the API."""

from __future__ import annotations

import pytest

from services.worker.actor import actor
from services.worker.resource_guard import MemoryLimits
from shared.db import Db
from shared.settings import Settings, SettingsError
from shared.sizes import parse_size
from tests.fixtures_api import ApiClient
from tests.support import TERMINAL, row_where, submit_task

# A long run of real processes: `make test-slow` (CI runs it after `make test`).
pytestmark = pytest.mark.slow

# The demo actor's limit: big enough for the pool process itself, reached in a few chunks.
HOG_LIMIT = 384 << 20


async def test_a_task_past_its_memory_limit_is_cancelled_with_its_chunks_saved(
        settings: Settings, db: Db, start_worker) -> None:
    # given a worker with one pool process and a hog that grows 16 MiB a chunk
    worker = start_worker(concurrency=1)
    [pool] = worker.children()
    row = await submit_task(settings, db, "hog", {"chunks": 200, "chunk_mb": 16,
                                                  "chunk_seconds": 0.05})
    # when its pool process outgrows the actor's limit
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, timeout=30,
                            what="hog to end")
    # then it is cancelled for the memory limit, cooperatively, every finished chunk saved
    assert final["status"] == "cancelled", dict(final)
    assert (final["cancel_reason"], final["cancel_by"], final["outcome"]) == \
        ("memory_limit", "memory_limit", "cooperative")
    saved = await db.saved_chunks(row["id"])
    assert 5 <= len(saved) < 200 and saved == set(range(len(saved))) == set(range(final["done"]))
    # and the last heartbeat recorded the process's RSS, near the limit
    assert final["rss_bytes"] is not None and final["rss_bytes"] > HOG_LIMIT * 0.5
    # and the same pool process, in a worker still up, runs the next task
    after = await submit_task(settings, db, "distill", {"chunks": 3, "chunk_seconds": 0.01})
    ok = await row_where(db, after["id"], lambda r: r["status"] in TERMINAL, timeout=20,
                         what="next task")
    assert ok["status"] == "succeeded" and ok["pid"] == pool.pid
    assert worker.proc is not None and worker.proc.poll() is None


async def test_an_uncooperative_task_past_its_limit_is_killed_and_the_worker_goes_on(
        settings: Settings, db: Db, start_worker) -> None:
    # given a hog that never looks at its token
    worker = start_worker(concurrency=1)
    row = await submit_task(settings, db, "hog", {"chunks": 200, "chunk_mb": 16,
                                                  "chunk_seconds": 0.1, "cooperative": False})
    # when it outgrows its limit, then the ladder kills it: cancelled, killed, why recorded
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL,
                            timeout=settings.cancel_grace + 30, what="hog to end")
    assert (final["status"], final["outcome"], final["cancel_reason"]) == \
        ("cancelled", "killed", "memory_limit"), dict(final)
    saved = await db.saved_chunks(row["id"])
    assert len(saved) >= 5 and saved == set(range(len(saved)))
    # and the worker replaces its pool process and runs the next task
    after = await submit_task(settings, db, "distill", {"chunks": 3, "chunk_seconds": 0.01})
    ok = await row_where(db, after["id"], lambda r: r["status"] in TERMINAL, timeout=30,
                         what="next task")
    assert ok["status"] == "succeeded"
    assert worker.proc is not None and worker.proc.poll() is None


async def test_running_tasks_report_rss_and_cpu_through_the_api(
        settings: Settings, db: Db, start_worker, api: ApiClient) -> None:
    # given a distill running on a worker
    start_worker(concurrency=1)
    row = await submit_task(settings, db, "distill", {"chunks": 100, "chunk_seconds": 0.05})
    # when it has beaten a few times
    await row_where(db, row["id"], lambda r: r["status"] == "running" and r["done"] >= 3
                    and r["rss_bytes"] is not None and r["cpu_percent"] is not None,
                    timeout=20, what="a beat with resources")
    # then the API shows what its pool process uses
    task = await (await api.get(f"/api/v1/tasks/{row['id']}")).json()
    rss, cpu = task["resources"]["rss_bytes"], task["resources"]["cpu_percent"]
    assert 10 << 20 < rss < 2 << 30 and 0.0 <= cpu <= 400.0, task["resources"]
    listed = await (await api.get("/api/v1/tasks?status=running")).json()
    assert [t["resources"]["rss_bytes"] is not None for t in listed["items"]] == [True]


# -- units: sizes and the limits table -----------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("text, size", [
    ("536870912", 536870912), ("512MB", 512 * 10**6), ("512M", 512 * 10**6),
    ("512MiB", 512 << 20), ("512mi", 512 << 20), ("1.5GiB", 3 << 29), ("2 gb", 2 * 10**9),
    (1024, 1024), ("", None), (None, None)])
def test_sizes_read_as_people_write_them(text: str | int | None, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.unit
@pytest.mark.parametrize("text", ["lots", "-5MB", "0", "12XB", "1e9"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.unit
def test_an_actor_s_limit_comes_before_the_worker_default() -> None:
    @actor(memory_limit="1GiB")
    def big(ctx: object) -> None: ...

    @actor
    def plain(ctx: object) -> None: ...

    limits = MemoryLimits.of([big, plain], Settings(worker_memory_limit="256MiB"))
    assert (limits.for_actor("big"), limits.for_actor("plain")) == (1 << 30, 256 << 20)
    assert big.options["memory_limit"] == 1 << 30
    assert MemoryLimits.of([plain], Settings()).for_actor("plain") is None
    with pytest.raises(SettingsError):
        Settings.from_env({"WORKER_MEMORY_LIMIT": "plenty"})
    with pytest.raises(ValueError):
        actor(memory_limit="a lot")
