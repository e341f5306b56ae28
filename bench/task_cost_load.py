"""The loads of the per-task cost section, over HTTP with the bench token: short tasks run to
`succeeded`, closed-loop submissions (single and batch), and the memory every process holds
meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from bench.ours import Ours
from bench.parked import PARKED_QUEUE
from bench.procs import Child, rss_mib
from bench.stats import Dist

# One chunk, no simulated model time: the task is all overhead.
SHORT = {"actor": "distill", "kwargs": {"chunks": 1, "chunk_seconds": 0}}


class Finished:
    """Task ids whose `task.changed` event said they ended, heard on the events channel: the
    bench waits for them without reading the database it counts statements of."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self._client = aioredis.from_url(redis_url)
        self._channel = channel
        self.ended: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Finished:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel)
        self._task = asyncio.create_task(self._listen(pubsub))
        return self

    async def _listen(self, pubsub: Any) -> None:
        async with pubsub:
            async for message in pubsub.listen():
                if not message or message.get("type") != "message":
                    continue
                event = json.loads(message["data"])
                if event.get("type") == "task.changed" and event.get("status") in (
                        "succeeded", "failed", "cancelled", "lost"):
                    self.ended[event["task_id"]] = event["status"]
                    self._changed.set()

    async def wait(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= self.ended.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                missing = len(ids - self.ended.keys())
                raise TimeoutError(f"{missing} of {len(ids)} tasks did not end in {timeout}s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()


async def submit_short(ours: Ours, n: int, clients: int) -> dict[str, Any]:
    """Submits `n` short tasks from `clients` concurrent clients; their ids and the clock."""
    latency = Dist()
    ids: list[str] = []
    left = iter(range(n))
    url, auth = f"{ours.api.base}/tasks", ours.api.auth

    async def client() -> None:
        for _ in left:
            p0 = time.perf_counter()
            async with ours.http.post(url, json=SHORT, headers=auth) as resp:
                body = await resp.json()
                if resp.status != 202:
                    raise RuntimeError(f"submit answered {resp.status}: {body}")
            latency.add((time.perf_counter() - p0) * 1000)
            ids.append(body["id"])

    t0 = time.time()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {"ids": ids, "t0": t0, "submitted_s": round(time.time() - t0, 3),
            "latency": latency.to_json(with_samples=False)}


async def outcome(ours: Ours, ids: list[str], t0: float) -> dict[str, Any]:
    """How the tasks ended, from their rows (after the counters were read)."""
    row = await ours.rows.pool.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'succeeded') AS ok, count(*) AS n, "
        "extract(epoch FROM min(started_at)) AS first_start, "
        "extract(epoch FROM max(finished_at)) AS last_end FROM tasks WHERE id = ANY($1::uuid[])",
        [uuid.UUID(i) for i in ids])
    span = float(row["last_end"]) - t0
    run = float(row["last_end"]) - float(row["first_start"])
    return {"tasks": len(ids), "succeeded": int(row["ok"]), "seconds": round(span, 3),
            "tasks_per_s": round(len(ids) / span, 1),
            "run_seconds": round(run, 3), "run_tasks_per_s": round(len(ids) / run, 1)}


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median tasks/s (the lower middle one of an even count)."""
    ordered = sorted(rounds, key=lambda r: r["tasks_per_s"])
    return dict(ordered[(len(ordered) - 1) // 2])


def _batch(size: int) -> dict[str, Any]:
    return {"tasks": [{**SHORT, "queue": PARKED_QUEUE} for _ in range(size)]}


async def submit_rate(ours: Ours, size: int, *, clients: int, seconds: float,
                      min_requests: int = 3) -> dict[str, Any]:
    """Closed loop: each client sends its next submission when the last one answered, for
    `seconds` (and at least `min_requests` in all). `size` 1 is `POST /api/v1/tasks`; more
    is `POST /api/v1/tasks:batch` with that many tasks. Into a queue no worker reads."""
    if size == 1:
        url, body = f"{ours.api.base}/tasks", {**SHORT, "queue": PARKED_QUEUE}
    else:
        url, body = f"{ours.api.base}/tasks:batch", _batch(size)
    payload = json.dumps(body).encode()
    headers = {**ours.api.auth, "Content-Type": "application/json"}
    latency = Dist()
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at or latency.n < min_requests:
            p0 = time.perf_counter()
            async with ours.http.post(url, data=payload, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latency.add((time.perf_counter() - p0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    took = time.perf_counter() - started
    accepted = statuses.get(202, 0)
    return {"batch": size, "clients": clients, "requests": latency.n, "seconds": round(took, 2),
            "requests_per_s": round(latency.n / took, 1),
            "tasks_per_s": round(accepted * size / took, 1),
            "latency": latency.to_json(with_samples=False),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


class RssSampler:
    """The resident memory (MiB) of named processes and their children, sampled every
    `every` seconds while running: the largest value seen of each."""

    def __init__(self, processes: Callable[[], dict[str, int]], every: float = 0.25) -> None:
        self._processes = processes
        self._every = every
        self.peak: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> dict[str, float]:
        now = {}
        for name, pid in self._processes().items():
            value = rss_mib(pid)
            if value is not None:
                now[name] = round(value, 1)
                self.peak[name] = max(self.peak.get(name, 0.0), now[name])
        return now

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self._every)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: Any) -> None:
        if self._task is not None:
            self._task.cancel()


def service_pids(children: dict[str, Child]) -> dict[str, int]:
    """Each service's main process, and each worker's pool processes as `<name> pool <i>`."""
    out: dict[str, int] = {}
    for name, child in children.items():
        if not child.alive():
            continue
        out[name] = child.pid
        if name in ("worker", "plain-celery"):
            for i, proc in enumerate(sorted(child.live_children(), key=lambda p: p.pid)):
                out[f"{name} pool {i + 1}"] = proc.pid
    return out
