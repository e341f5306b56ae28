"""1c. Plain Celery: `revoke(terminate=True, signal='SIGKILL')` on a running sleep loop.

Measured: `time.perf_counter()` before the revoke call -> the pool process is gone
(psutil, polled every 1 ms; a zombie counts as gone). The pid comes from the task's
start mark.
"""

from __future__ import annotations

import random
import time
from typing import Any

from bench.plain_worker import PlainWorker
from bench.procs import wait_gone
from bench.stats import Dist


def run(worker: PlainWorker, rounds: int, rng: random.Random) -> dict[str, Any]:
    gone = Dist()
    for _ in range(rounds):
        worker.wait_pool_full()
        result = worker.app.send_task("bench.sleep_loop", args=[600], queue=worker.queue)
        pid = worker.marks.wait_started(result.id)
        time.sleep(rng.uniform(0.02, 0.12))
        p0 = time.perf_counter()
        worker.app.control.revoke(result.id, terminate=True, signal="SIGKILL")
        seen = wait_gone(pid, 30)
        if seen is None:
            raise RuntimeError(f"revoke(terminate=True) left pid {pid} running")
        gone.add((seen - p0) * 1000)
    return {"gone": gone.to_json()}
