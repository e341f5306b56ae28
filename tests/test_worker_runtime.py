"""The task runtime against real Postgres, Redis and Celery worker processes."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.broker import make_celery
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from shared.submit import submit
from tests.support import wait_for


@pytest.fixture
def celery(settings: Settings):
    app = make_celery(settings)
    yield app
    app.close()


async def _status(db: Db, task_id: uuid.UUID) -> str:
    row = await db.get_task(task_id)
    return row["status"]


async def test_distill_runs_to_success_with_progress_heartbeat_and_results(
        db: Db, celery, start_worker) -> None:
    # given a running worker
    start_worker()
    # when a distill of 20 chunks at 0.2 s is submitted
    row = await submit(db, celery, actor="distill", kwargs={"chunks": 20, "chunk_seconds": 0.2})
    task_id = row["id"]
    heartbeats = set()

    async def finished() -> bool:
        r = await db.get_task(task_id)
        if r["heartbeat_at"] is not None:
            heartbeats.add(r["heartbeat_at"])
        return r["status"] in ("succeeded", "failed", "cancelled", "lost")

    await wait_for(finished, timeout=30, what="distill to finish")
    # then it succeeded with full progress, 20 saved results, and the heartbeat moved
    final = await db.get_task(task_id)
    assert final["status"] == "succeeded", dict(final)
    assert (final["done"], final["failed"], final["total"]) == (20, 0, 20)
    results = await db.list_results(task_id)
    assert [r["chunk"] for r in results] == list(range(20))
    assert all(r["ok"] and r["result"]["top_terms"] and r["result"]["extract"] for r in results)
    assert len(heartbeats) >= 3, heartbeats
    assert final["attempt"] == 1


async def test_duplicate_delivery_while_running_executes_once(db: Db, celery, start_worker) -> None:
    # given a worker with two pool processes and a running distill
    start_worker(concurrency=2)
    row = await submit(db, celery, actor="distill", kwargs={"chunks": 10, "chunk_seconds": 0.2})
    task_id, message_id = row["id"], row["message_id"]

    async def running() -> bool:
        return await _status(db, task_id) == "running"

    await wait_for(running, timeout=20, what="task to start")
    # when the very same Celery message is delivered again
    celery.send_task("distill", kwargs={"task_id": str(task_id)}, task_id=str(message_id))

    async def finished() -> bool:
        return await _status(db, task_id) == "succeeded"

    await wait_for(finished, timeout=30, what="task to finish")
    await asyncio.sleep(0.5)
    # then it ran once: one attempt, each chunk saved by that attempt
    final = await db.get_task(task_id)
    assert final["attempt"] == 1
    results = await db.list_results(task_id)
    assert len(results) == 10 and {r["attempt"] for r in results} == {1}


async def test_every_process_of_a_worker_keeps_listening_for_cancels(
        settings: Settings, start_worker, redis) -> None:
    # given a worker with two pool processes, settled for a while (and garbage collected)
    start_worker(concurrency=2)
    channel = Keys(settings.key_prefix).cancel_channel

    async def subscribers() -> int:
        return dict(await redis.pubsub_numsub(channel)).get(channel, 0)

    # then each pool process and the main process's guardian listen, and keep listening
    await wait_for(lambda: _equals(subscribers(), 3), timeout=10, what="3 subscribers")
    await asyncio.sleep(4.0)
    assert await subscribers() == 3


async def _equals(value, expected) -> bool:
    return await value == expected


async def test_a_one_chunk_execution_crosses_to_the_sidecar_loop_three_times(
        settings: Settings, db: Db, celery, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a queued one-chunk distill and a pool process's runtime in this very process
    import signal

    from services.worker.actors.distill import distill
    from services.worker.app import load_actors, publish_catalogue
    from services.worker.runtime import Runtime

    await publish_catalogue(settings, load_actors(settings))
    row = await submit(db, celery, actor="distill", kwargs={"chunks": 1, "chunk_seconds": 0})
    previous_handler = signal.getsignal(signal.SIGUSR2)
    runtime = Runtime(settings, celery)
    runtime.start_process()
    assert runtime.sidecar is not None
    hops: list[str] = []
    real = asyncio.run_coroutine_threadsafe

    def counted(coro, loop):
        if loop is runtime.sidecar.loop:
            hops.append(coro.__qualname__)
        return real(coro, loop)

    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", counted)
    try:
        # when it executes
        outcome = runtime.execute(distill, str(row["id"]), str(row["message_id"]))
    finally:
        monkeypatch.undo()
        runtime.sidecar.close()
        signal.signal(signal.SIGUSR2, previous_handler)
    # then it ran to its end, and the runtime's thread handed the loop one coroutine to open
    # the execution, one per checkpoint and one to close it
    assert outcome == "succeeded"
    final = await db.get_task(row["id"])
    assert (final["status"], final["done"]) == ("succeeded", 1), dict(final)
    assert hops == ["open_execution", "Sidecar.save_result", "close_execution"], hops
