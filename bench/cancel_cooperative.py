"""1a. A cooperative task (`distill`) cancelled through the API.

Clock: `time.time()` just before the HTTP call. Token observed: the timestamp of the
worker's `task.cancel_observed` log line, written right after the sidecar set the
token. For the split, the API's own `task.cancel_requested` line, written once the
DB transaction committed and the event was published. Row terminal: the row's `finished_at` (PostgreSQL `now()` of the finishing
statement; same host clock), and, as a cross-check, the first 2 ms poll that saw it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from bench.ours import Ours
from bench.stats import Dist

# Long enough never to finish during a round; each chunk is a wait the cancel wakes.
_KWARGS = {"chunks": 100_000, "chunk_seconds": 0.2}


async def run(ours: Ours, rounds: int, rng: random.Random) -> dict[str, Any]:
    observed, terminal, polled, api, announced = Dist(), Dist(), Dist(), Dist(), Dist()
    # From the API's line to the worker's: the event's trip (the API logs just after
    # publishing, so this can come out a little below zero).
    delivery = Dist()
    outcomes: Counter[str] = Counter()
    via: Counter[str] = Counter()
    ours.worker_log.skip_existing()
    ours.api_log.skip_existing()
    for _ in range(rounds):
        task = await ours.api.submit("distill", _KWARGS)
        tid = task["id"]
        await ours.rows.wait_running(tid)
        # Let it get into its chunks; cancels land at random points of the work.
        await asyncio.sleep(rng.uniform(0.02, 0.12))
        t0, p0 = time.time(), time.perf_counter()
        await ours.api.cancel(tid)
        api.add((time.perf_counter() - p0) * 1000)
        row, seen = await ours.rows.wait_terminal(tid, timeout=10)
        polled.add((seen - p0) * 1000)
        terminal.add((row["finished_at"].timestamp() - t0) * 1000)
        observed_line = await ours.worker_log.record("task.cancel_observed", tid, 10)
        seen_at = observed_line["epoch"]
        # "event" (the Redis message) or "poll" (the fallback DB read).
        via[str(observed_line.get("via"))] += 1
        announced_at = await ours.api_log.when("task.cancel_requested", tid, 10)
        observed.add((seen_at - t0) * 1000)
        announced.add((announced_at - t0) * 1000)
        delivery.add((seen_at - announced_at) * 1000)
        outcomes[f"{row['status']}/{row['outcome']}"] += 1
    return {
        "observed": observed.to_json(), "terminal": terminal.to_json(),
        "terminal_polled": polled.to_json(), "api_call": api.to_json(),
        "announced": announced.to_json(), "delivery": delivery.to_json(),
        "outcomes": dict(outcomes), "observed_via": dict(via), "kwargs": _KWARGS,
    }
