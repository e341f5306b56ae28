"""3. cancel-all at scale: N queued tasks (parked, see `parked`) plus two running ones,
a cooperative `distill` and an uncooperative `stubborn` (mode sleep), on one worker.

Measured from `time.perf_counter()` before `POST /api/v1/tasks/cancel-all`: the HTTP
answer, and the first 5 ms poll that finds no row queued, running or cancelling. Each
running task's own end is its row's `finished_at` minus `time.time()` at the call.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.ours import Ours
from bench.parked import drain, park, parked_messages


async def scenario(ours: Ours, queued: int) -> dict[str, Any]:
    settings, rows = ours.stack.settings, ours.rows
    await ours.stack.worker_pool_full()
    coop = await ours.api.submit("distill", {"chunks": 100_000, "chunk_seconds": 0.2})
    deaf = await ours.api.submit("stubborn", {"seconds": 600, "mode": "sleep"})
    for task in (coop, deaf):
        await rows.wait_running(task["id"])
    await park(rows, settings, queued)
    messages = await parked_messages(settings, ours.stack.keys)
    before = await rows.non_terminal()
    await asyncio.sleep(0.3)

    t0, p0 = time.time(), time.perf_counter()
    answer = await ours.api.cancel_all()
    answered = time.perf_counter() - p0
    while await rows.non_terminal():
        if time.perf_counter() - p0 > settings.cancel_grace + 60:
            raise TimeoutError("cancel-all left rows active for a minute")
        await asyncio.sleep(0.005)
    settled = time.perf_counter() - p0

    ends = {}
    for name, task in (("distill", coop), ("stubborn", deaf)):
        row = await rows.get(task["id"])
        assert row is not None
        seen = await ours.worker_log.record("task.cancel_observed", task["id"], 10)
        ends[name] = {"ms": round((row["finished_at"].timestamp() - t0) * 1000, 1),
                      "status": row["status"], "outcome": row["outcome"],
                      "observed_ms": round((seen["epoch"] - t0) * 1000, 1),
                      "observed_via": seen.get("via")}
    await drain(settings, ours.stack.keys)
    await ours.stack.worker_pool_full()
    return {"queued": queued, "messages_waiting": messages, "active_rows_before": before,
            "response_ms": round(answered * 1000, 1), "server_took_ms": answer.get("took_ms"),
            "all_terminal_ms": round(settled * 1000, 1), "answer": answer, "running": ends}


async def run(ours: Ours, sizes: dict[int, int]) -> list[dict[str, Any]]:
    """`sizes`: queued-task count -> repetitions."""
    return [await scenario(ours, n) for n, times in sizes.items() for _ in range(times)]
