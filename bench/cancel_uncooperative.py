"""1b. A task that never checks its token (`stubborn`) cancelled through the API.

`mode=sleep`: the pool process's own watchdog ends it when the grace period is over.
`mode=gil`: the process holds the GIL, so nothing inside it runs; the worker's main
process (its guardian) kills it at the deadline, and the reaper, through the worker,
once the deadline plus KILL_MARGIN has passed if nothing else did.
Measured: `time.perf_counter()` before the HTTP call -> the pool process is gone
(psutil, polled every 1 ms; a zombie counts as gone); and who killed it, from the
worker's log.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from bench.ours import Ours
from bench.procs import wait_gone
from bench.stats import Dist

# Who ended the process, by the line each writes to the worker's log: the pool process's
# own watchdog, the worker main process's guardian, or the reaper through the worker.
KILLERS = (("watchdog", "task.watchdog_kill"), ("guardian", "worker.guardian_killed"),
           ("reaper", "worker.killed"))


async def run(ours: Ours, mode: str, rounds: int, rng: random.Random) -> dict[str, Any]:
    settings = ours.stack.settings
    grace = settings.cancel_grace
    gone, api, guardian_late = Dist(), Dist(), Dist()
    outcomes: Counter[str] = Counter()
    killed_by: Counter[str] = Counter()
    for _ in range(rounds):
        await ours.stack.worker_pool_full()
        task = await ours.api.submit("stubborn", {"seconds": 600, "mode": mode})
        tid = task["id"]
        row = await ours.rows.wait_running(tid)
        # Into the blocking call (for `gil`, past the library lookup that still lets go).
        await asyncio.sleep(rng.uniform(0.3, 0.5))
        p0 = time.perf_counter()
        await ours.api.cancel(tid)
        api.add((time.perf_counter() - p0) * 1000)
        seen = await asyncio.to_thread(wait_gone, row["pid"], grace + 30)
        if seen is None:
            raise RuntimeError(f"stubborn {mode} task {tid} (pid {row['pid']}) never died")
        gone.add((seen - p0) * 1000)
        final, _ = await ours.rows.wait_terminal(tid, timeout=30)
        outcomes[f"{final['status']}/{final['outcome']}"] += 1
        killer, line = await _killer(ours, tid)
        killed_by[killer] += 1
        if killer == "guardian" and "after_deadline_s" in line:
            guardian_late.add(float(line["after_deadline_s"]) * 1000)
    return {
        "mode": mode, "grace_s": grace, "kill_margin_s": settings.kill_margin,
        "gone": gone.to_json(), "gone_minus_grace": gone.shifted(-grace * 1000).to_json(),
        "api_call": api.to_json(), "outcomes": dict(outcomes), "killed_by": dict(killed_by),
        "guardian_after_deadline": guardian_late.to_json(),
    }


async def _killer(ours: Ours, task_id: str, timeout: float = 2.0) -> tuple[str, dict[str, Any]]:
    """Which of KILLERS logged the kill (the line may land just after the process died)."""
    deadline = time.monotonic() + timeout
    while True:
        for name, event in KILLERS:
            line = ours.worker_log.find(event, task_id)
            if line is not None:
                return name, line
        if time.monotonic() > deadline:
            return "unknown", {}
        await asyncio.sleep(0.01)
