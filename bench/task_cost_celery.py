"""Plain Celery's short tasks, for the per-task cost section: the no-op `bench.noop` task
(`acks_late`, Redis broker and result backend, prefork with the same pool size as ours),
sent by `clients` threads, run to a stored result."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from bench.plain_worker import PlainWorker
from bench.stack import delete_prefix
from bench.stats import Dist
from bench.task_cost_counters import SETTLE_S, Counters, Window, idle_window
from bench.task_cost_cpu import CpuClock
from bench.task_cost_cpu import per as per_cpu
from bench.task_cost_load import RssSampler, median_round, service_pids


def _send(worker: PlainWorker, n: int, clients: int) -> tuple[list[str], float, Dist]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    left = iter(ids)
    lock = threading.Lock()
    latency = Dist()

    def client() -> None:
        with worker.app.producer_or_acquire() as producer:
            while True:
                with lock:
                    task_id = next(left, None)
                if task_id is None:
                    return
                p0 = time.perf_counter()
                worker.app.send_task("bench.noop", task_id=task_id, queue=worker.queue,
                                     producer=producer)
                with lock:
                    latency.add((time.perf_counter() - p0) * 1000)

    t0 = time.time()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids, t0, latency


def _results(worker: PlainWorker, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Every task's stored result (the backend's own keys, read in batches), once all are
    there."""
    backend = worker.app.backend
    keys = [backend.get_key_for_task(i) for i in ids]
    client: redis.Redis = backend.client
    deadline = time.monotonic() + timeout
    while True:
        raw = [v for start in range(0, len(keys), 500) for v in client.mget(keys[start:start + 500])]
        if all(v is not None for v in raw):
            return [json.loads(v) for v in raw]
        if time.monotonic() > deadline:
            done = sum(v is not None for v in raw)
            raise TimeoutError(f"plain Celery: {done} of {len(ids)} results after {timeout}s")
        time.sleep(0.05)


def _finished_at(result: dict[str, Any]) -> float:
    return datetime.fromisoformat(result["date_done"]).timestamp()


async def run(redis_url: str, out_dir: Path, *, n: int, clients: int, warmup: int,
              idle_s: float, rounds: int = 1, redis_pid: int | None = None) -> dict[str, Any]:
    worker = PlainWorker(redis_url, out_dir)
    counters = await Counters(None, redis_url).open()
    try:
        await asyncio.to_thread(worker.start)
        pids = lambda: service_pids({"plain-celery": worker.child})  # noqa: E731
        idle_rss = RssSampler(pids).sample()
        ids, _, _ = await asyncio.to_thread(_send, worker, warmup, clients)
        await asyncio.to_thread(_results, worker, ids, 60)
        await asyncio.sleep(SETTLE_S)
        idle = await idle_window(counters, idle_s)
        before = await counters.snapshot()
        cpu = CpuClock(pids, redis_pid=redis_pid)
        await cpu.start()
        ran = []
        with RssSampler(pids) as rss:
            for _ in range(rounds):
                ids, t0, latency = await asyncio.to_thread(_send, worker, n, clients)
                sent_s = time.time() - t0
                results = await asyncio.to_thread(_results, worker, ids, 120)
                last = max(_finished_at(r) for r in results)
                ran.append({"tasks": n, "succeeded": sum(r["status"] == "SUCCESS"
                                                         for r in results),
                            "seconds": round(last - t0, 3), "tasks_per_s": round(n / (last - t0), 1),
                            "sent_s": round(sent_s, 3),
                            "send_latency_ms": latency.to_json(with_samples=False)})
        used = cpu.stop()
        after = await counters.settled()
        window = Window.between(before, after)
        return {
            **median_round(ran), "rounds": ran, "clients": clients,
            "per_task": window.per(n * rounds, idle), "idle": idle.to_json(),
            "cpu_ms_per_task": per_cpu(used, n * rounds),
            "rss_mib": {"idle": idle_rss, "under_load_peak": rss.peak},
            "concurrency": worker.concurrency,
        }
    finally:
        await counters.close()
        await asyncio.to_thread(worker.stop)
        await delete_prefix(redis_url, worker.prefix)
