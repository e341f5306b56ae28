"""Plain Celery's short tasks, for the per-task cost section: the no-op `bench.noop` task
(`acks_late`, Redis broker and result backend, prefork with the same pool size as ours),
sent by `clients` threads, each round timed to its last stored result."""

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
from bench.task_cost_load import service_pids


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


class CeleryRun:
    """The plain Celery worker as a contender of the per-task cost section (see
    bench/task_cost_runs.py): started, warmed up, asked for rounds, stopped."""

    key = "celery"

    def __init__(self, redis_url: str, out_dir: Path, *, n: int, clients: int,
                 warmup: int) -> None:
        self._redis_url = redis_url
        self._n = n
        self._clients = clients
        self._warmup = warmup
        self.worker = PlainWorker(redis_url, out_dir)
        self.ran: list[dict[str, Any]] = []

    def pids(self) -> dict[str, int]:
        return service_pids({"plain-celery": self.worker.child})

    async def start(self) -> None:
        await asyncio.to_thread(self.worker.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.worker.stop)
        await delete_prefix(self._redis_url, self.worker.prefix)

    async def warm(self) -> None:
        ids, _, _ = await asyncio.to_thread(_send, self.worker, self._warmup, self._clients)
        await asyncio.to_thread(_results, self.worker, ids, 60)

    async def round(self) -> None:
        n = self._n
        ids, t0, latency = await asyncio.to_thread(_send, self.worker, n, self._clients)
        sent_s = time.time() - t0
        results = await asyncio.to_thread(_results, self.worker, ids, 120)
        last = max(_finished_at(r) for r in results)
        self.ran.append({"tasks": n, "succeeded": sum(r["status"] == "SUCCESS" for r in results),
                         "seconds": round(last - t0, 3), "tasks_per_s": round(n / (last - t0), 1),
                         "sent_s": round(sent_s, 3),
                         "send_latency_ms": latency.to_json(with_samples=False)})
