"""pause-all of N queued tasks plus two running ones, then resume-all.

The running ones are a cooperative `distill` and an uncooperative `stubborn` (mode sleep,
killed when its grace runs out) on one worker; the queued ones are parked (real rows and
messages in a queue no worker reads, see `parked`). Measured from `time.perf_counter()`
before each call: `POST /api/v1/tasks/pause-all`'s HTTP answer, and the first 5 ms poll
that finds none of these tasks queued, running or pausing (all paused); then
`POST /api/v1/tasks/resume-all`'s answer (every paused task queued again, its message
published). The goal: pause-all answered under 200 ms, all paused within the grace + 1 s.

Standalone: `.venv/bin/python -m bench.pause_all [--sizes 1000,10000] [--rounds 3]`
starts a worker, a reaper and the API of its own and prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from bench.ours import Ours
from bench.parked import drain, park
from bench.stack import Servers, Stack

CANCEL_GRACE = 1.0
_UNSETTLED = "SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[]) AND status IN " \
             "('queued', 'running', 'pausing')"


async def _post(ours: Ours, path: str, body: dict[str, Any]) -> dict[str, Any]:
    api = ours.api
    async with api.http.post(api.base + path, json=body, headers=api.auth) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 202:
            raise RuntimeError(f"POST {path} -> {resp.status}: {data}")
        return data


async def scenario(ours: Ours, queued: int) -> dict[str, Any]:
    settings, rows = ours.stack.settings, ours.rows
    await ours.stack.worker_pool_full()
    coop = await ours.api.submit("distill", {"chunks": 100_000, "chunk_seconds": 0.2})
    deaf = await ours.api.submit("stubborn", {"seconds": 600, "mode": "sleep"})
    for task in (coop, deaf):
        await rows.wait_running(task["id"])
    ids = [uuid.UUID(t) for t in [coop["id"], deaf["id"], *await park(rows, settings, queued)]]
    await asyncio.sleep(0.3)

    p0 = time.perf_counter()
    paused = await _post(ours, "/tasks/pause-all", {"reason": "bench"})
    answered = time.perf_counter() - p0
    while await rows.pool.fetchval(_UNSETTLED, ids):
        if time.perf_counter() - p0 > settings.cancel_grace + 60:
            raise TimeoutError("pause-all left tasks unpaused for a minute")
        await asyncio.sleep(0.005)
    settled = time.perf_counter() - p0
    ends = {name: dict(await rows.pool.fetchrow(
                "SELECT status, outcome, extract(epoch FROM finished_at)::float8 AS at "
                "FROM tasks WHERE id = $1", uuid.UUID(task["id"])))
            for name, task in (("distill", coop), ("stubborn", deaf))}

    p1 = time.perf_counter()
    resumed = await _post(ours, "/tasks/resume-all", {})
    resume_answered = time.perf_counter() - p1

    # Leave nothing behind for the next round: the two running ones are cancelled.
    await ours.api.cancel_all()
    for task in (coop, deaf):
        await rows.wait_terminal(task["id"], timeout=settings.cancel_grace + 30)
    await drain(settings, ours.stack.keys)
    return {"queued": queued, "running": 2,
            "pause_all_response_ms": round(answered * 1000, 1),
            "pause_all_server_took_ms": paused.get("took_ms"),
            "all_paused_ms": round(settled * 1000, 1), "pause_answer": paused,
            "running_ends": {k: {"status": v["status"], "outcome": v["outcome"]}
                             for k, v in ends.items()},
            "resume_all_response_ms": round(resume_answered * 1000, 1),
            "resume_all_server_took_ms": resumed.get("took_ms"), "resume_answer": resumed}


async def run(ours: Ours, sizes: dict[int, int]) -> list[dict[str, Any]]:
    """`sizes`: queued-task count -> repetitions."""
    return [await scenario(ours, n) for n, times in sizes.items() for _ in range(times)]


async def _main(sizes: dict[int, int], out_dir: Path) -> list[dict[str, Any]]:
    servers = Servers.open()
    stack = await Stack.create(servers, out_dir, cancel_grace=CANCEL_GRACE)
    try:
        await stack.start_worker()
        await stack.start_reaper()
        await stack.start_api()
        async with Ours.open(stack) as ours:
            return await run(ours, sizes)
    finally:
        await stack.destroy()
        servers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="queued tasks, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/out/pause_all"))
    args = parser.parse_args()
    sizes = {int(n): args.rounds for n in args.sizes.split(",")}
    data = asyncio.run(_main(sizes, args.out))
    for r in data:
        print(f"{r['queued']} queued + 2 running: pause-all answered "
              f"{r['pause_all_response_ms']} ms (server {r['pause_all_server_took_ms']} ms), "
              f"all paused {r['all_paused_ms']} ms (grace {CANCEL_GRACE:g} s); resume-all "
              f"answered {r['resume_all_response_ms']} ms; running ended "
              f"{ {k: v['outcome'] for k, v in r['running_ends'].items()} }")
    print(json.dumps(data, indent=1, default=str))


if __name__ == "__main__":
    main()
