"""5. The API under load from an aiohttp client on loopback, and the memory each service
process holds.

Closed loop: `concurrency` clients, each sending its next request when the previous one
answered, until `duration` seconds or `max_requests` have passed. The load generator
shares the machine's cores with the API it measures.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.ours import Ours
from bench.parked import PARKED_QUEUE, drain, park
from bench.procs import rss_mib
from bench.stats import Dist

Send = Callable[[aiohttp.ClientSession], Any]


async def _load(http: aiohttp.ClientSession, send: Send, *, concurrency: int, duration: float,
                max_requests: int) -> dict[str, Any]:
    latency = Dist()
    statuses: Counter[int] = Counter()
    issued = 0
    stop_at = time.perf_counter() + duration

    async def client() -> None:
        nonlocal issued
        while time.perf_counter() < stop_at and issued < max_requests:
            issued += 1
            p0 = time.perf_counter()
            async with send(http) as resp:
                await resp.read()
                statuses[resp.status] += 1
            latency.add((time.perf_counter() - p0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"requests": latency.n, "seconds": round(elapsed, 2),
            "rps": round(latency.n / elapsed, 1), "concurrency": concurrency,
            "latency": latency.to_json(with_samples=False),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def rss(ours: Ours) -> dict[str, Any]:
    """Resident memory (MiB) of every service process, the worker's pool processes included."""
    out: dict[str, Any] = {}
    for name in ("api", "reaper"):
        child = ours.stack.children.get(name)
        if child is not None:
            out[name] = _mib(rss_mib(child.pid))
    worker = ours.stack.children.get("worker")
    if worker is not None:
        out["worker_main"] = _mib(rss_mib(worker.pid))
        out["worker_pool"] = [_mib(rss_mib(p.pid)) for p in worker.live_children()]
    return out


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def run(ours: Ours, *, concurrency: int, duration: float, max_requests: int,
              rng: random.Random) -> dict[str, Any]:
    settings = ours.stack.settings
    idle = rss(ours)
    ids = await park(ours.rows, settings, 500)
    base, auth = ours.api.base, ours.api.auth

    def get_task(http: aiohttp.ClientSession) -> Any:
        return http.get(f"{base}/tasks/{rng.choice(ids)}", headers=auth)

    body = {"actor": "distill", "kwargs": {"chunks": 5}, "queue": PARKED_QUEUE}

    def post_task(http: aiohttp.ClientSession) -> Any:
        return http.post(f"{base}/tasks", json=body, headers=auth)

    get = await _load(ours.http, get_task, concurrency=concurrency, duration=duration,
                      max_requests=max_requests)
    post = await _load(ours.http, post_task, concurrency=concurrency, duration=duration,
                       max_requests=max_requests)
    loaded = rss(ours)
    # Leave nothing behind that a later measurement would count as active.
    await ours.api.cancel_all(queue=PARKED_QUEUE)
    await drain(settings, ours.stack.keys)
    return {"get_task": get, "post_task": post, "rss_mib": {"idle": idle, "after_load": loaded}}
