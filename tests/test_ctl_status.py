"""`taskctl status`: its numbers are what Redis, PostgreSQL and the process table say."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import psutil
import redis.asyncio as aioredis

from shared.broker import make_celery
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from shared.submit import submit
from tests.support import ROOT, settings_env, wait_for
from tests.test_ctl_helpers import arun_ctl, queue_lengths, start_decoy, stop, unacked


async def test_status_json_matches_redis_postgres_and_the_process_table(
        settings: Settings, db: Db, redis: aioredis.Redis, start_worker) -> None:
    # given an idle worker that finished one task and holds one scheduled for later,
    # and tasks queued where no worker consumes
    worker = start_worker(concurrency=2)
    celery = make_celery(settings)
    try:
        done = await submit(db, celery, actor="distill", kwargs={"chunks": 1, "chunk_seconds": 0})

        async def finished() -> bool:
            row = await db.get_task(done["id"])
            return row is not None and row["status"] == "succeeded"

        await wait_for(finished, timeout=20, what="the first task to finish")
        await submit(db, celery, actor="distill", kwargs={"chunks": 3}, countdown=300)
        for _ in range(3):
            await submit(db, celery, actor="distill", kwargs={"chunks": 3}, queue="parked")
    finally:
        celery.close()
    keys = Keys(settings.key_prefix)

    async def settled() -> bool:
        return await redis.hlen(keys.celery_key("unacked")) == 1

    await wait_for(settled, timeout=10, what="the scheduled message held by the worker")
    await redis.hset(keys.reaper_status, mapping={
        "leader": "reaper-a", "last_pass_at": time.time() - 2, "last_pass_ms": 3.25,
        "found:zombies": 2, "found:stale_registry": 0})
    await redis.set(keys.leader, "reaper-a")
    decoy = start_decoy(settings)
    try:
        # when status runs
        out = await arun_ctl(settings, "status", "--json")
        # and, in the same moment, we look ourselves
        lengths = await queue_lengths(redis, settings, ["default", "parked"])
        hlen, zcard = await unacked(redis, settings)
        counts = await db.counts()
        tree = {worker.pid, *(c.pid for c in psutil.Process(worker.pid).children(recursive=True))}
    finally:
        stop(decoy)
    # then every number agrees
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert {q: status["queues"][q] for q in lengths} == lengths == {"default": 0, "parked": 3}
    assert (status["unacked"], status["unacked_index"]) == (hlen, zcard) == (1, 1)
    assert status["counts"] == counts
    assert counts["queued"] == 4 and counts["succeeded"] == 1
    assert {p["pid"] for p in status["processes"]} == tree
    assert decoy.pid not in {p["pid"] for p in status["processes"]}
    roles = {p["pid"]: p["role"] for p in status["processes"]}
    assert roles[worker.pid] == "main"
    assert sorted(roles.values()) == ["main", "pool", "pool"]
    assert all(p["rss"] > 0 and p["uptime_s"] >= 0 for p in status["processes"])
    [w] = status["workers"]
    assert (w["node"], w["pid"], w["state"], w["replied"]) == (worker.node, worker.pid,
                                                               "alive", True)
    assert (w["active"], w["reserved"], w["scheduled"]) == (0, 0, 1)
    assert status["reaper"]["leader"] == "reaper-a"
    assert status["reaper"]["last_pass_ms"] == 3.25
    assert status["inconsistencies"] == {"zombies": 2, "stale_registry": 0}

    # and the pretty form shows the same, and the worker's container healthcheck passes
    pretty = await arun_ctl(settings, "status")
    assert pretty.returncode == 0, pretty.stderr
    for text in (worker.node, "parked", "found: zombies", "reaper-a"):
        assert text in pretty.stdout
    probe = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.ctl.probe", "worker"], cwd=ROOT,
        env=settings_env(settings), capture_output=True, timeout=30)
    assert probe.returncode == 0, probe.stderr


def _record(settings: Settings, node: str, pid: int, started: float) -> tuple[str, str]:
    return node, json.dumps({"node": node, "host": settings.hostname, "pid": pid,
                             "pid_started": started, "concurrency": 1, "started_at": started})


async def test_status_tells_dead_and_recycled_worker_records_apart(
        settings: Settings, redis: aioredis.Redis) -> None:
    # given a record of a worker that exited, and one whose pid now belongs to another process
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_started = psutil.Process(gone.pid).create_time()
    gone.wait()
    decoy = start_decoy(settings)
    keys = Keys(settings.key_prefix)
    await redis.delete(keys.workers)
    try:
        recycled_started = psutil.Process(decoy.pid).create_time() - 3600
        await redis.hset(keys.workers, mapping=dict([
            _record(settings, "exited@here", gone.pid, gone_started),
            _record(settings, "recycled@here", decoy.pid, recycled_started)]))
        # when status runs
        out = await arun_ctl(settings, "status", "--json")
        probe = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.ctl.probe", "worker"], cwd=ROOT,
            env=settings_env(settings), capture_output=True, timeout=30)
    finally:
        stop(decoy)
        await redis.delete(keys.workers)
    # then neither counts as a worker: no process listed, the healthcheck fails
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    states = {w["node"]: w["state"] for w in status["workers"]}
    assert states == {"exited@here": "gone", "recycled@here": "pid reused"}
    assert status["processes"] == []
    assert probe.returncode == 1
