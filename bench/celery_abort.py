"""1d. Plain Celery: an `AbortableTask` that polls `is_aborted()` every 10 ms, stopped by
`AbortableAsyncResult.abort()` (which writes ABORTED into the Redis result backend).

Measured: `time.time()` before the abort call -> the exit time the task recorded.
"""

from __future__ import annotations

import random
import time
from typing import Any

from celery.contrib.abortable import AbortableAsyncResult

from bench.plain_worker import PlainWorker
from bench.stats import Dist

POLL_INTERVAL = 0.01


def run(worker: PlainWorker, rounds: int, rng: random.Random) -> dict[str, Any]:
    exited = Dist()
    for _ in range(rounds):
        result = worker.app.send_task("bench.abortable_loop", args=[600, POLL_INTERVAL],
                                      queue=worker.queue)
        worker.marks.wait_started(result.id)
        time.sleep(rng.uniform(0.02, 0.12))
        t0 = time.time()
        AbortableAsyncResult(result.id, app=worker.app).abort()
        exited.add((worker.marks.wait_exited(result.id) - t0) * 1000)
    return {"exited": exited.to_json(), "poll_interval_ms": POLL_INTERVAL * 1000}
