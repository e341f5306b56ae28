"""9. SIGTERM to a busy worker: how soon each running task goes on on another worker, and how
many of its chunks are done twice. Ours (the drain) beside plain Celery 5.5+ (soft shutdown).

Each round starts two workers of one kind; the second takes nothing (its consumer cancelled
through Celery's remote control) until the first runs TASKS long chunked tasks, each AHEAD
chunks in. Then the second consumes, SIGTERM goes to the first's main process (what
Kubernetes and `docker stop` send), and per task:
- continue: SIGTERM -> its next start on the second worker (ours: the new attempt's
  `started_at` in its row; Celery: the task's next start mark), same host clock;
- exit: SIGTERM -> the first worker's main process gone (per round);
- redone: chunks done twice, once the task finished (ours: chunks the first attempt saved
  that the second did not find in the checkpoint; Celery: chunks marked more than once).
Both get the same grace: DRAIN_GRACE for ours, worker_soft_shutdown_timeout for Celery
(bench/drain_celery.py, with late acknowledgement and REMAP_SIGTERM=SIGQUIT).

`python -m bench.drain [--rounds N] [--grace S]` runs it alone and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

from bench.drain_plain import consume, run_plain, start_worker
from bench.poll import until
from bench.procs import ROOT, Child
from bench.stack import Servers, Stack
from bench.stats import Dist
from shared.broker import make_celery
from shared.db import Db
from shared.submit import submit
from tests.support import settings_env

TASKS = 4
CHUNKS = 200
CHUNK_SECONDS = 0.1
AHEAD = 20
GRACE = 10.0
ROUNDS = 2
Say = Callable[[str], None]


def restored(log_path: Path, task_id: str) -> int | None:
    for line in log_path.read_text(errors="replace").splitlines():
        if "task.started" in line and task_id in line and "attempt=2" in line:
            found = re.search(r"restored_chunks=(\d+)", line)
            return int(found.group(1)) if found else None
    return None


async def _ours_round(stack: Stack, db: Db, celery: Celery, rnd: int) -> dict[str, Any]:
    s = stack.settings.with_(worker_concurrency=TASKS)
    host = socket.gethostname()
    nodes = [f"drain{rnd}{side}{uuid.uuid4().hex[:6]}@{host}" for side in "ab"]
    children = [Child(f"ours-{rnd}-{side}", "services.worker", ["-n", node], settings_env(s),
                      stack.out_dir / f"ours-{rnd}-{side}.out")
                for side, node in zip("ab", nodes, strict=True)]
    first, second = children
    try:
        await asyncio.gather(*(start_worker(celery, c, n, TASKS)
                               for c, n in zip(children, nodes, strict=True)))
        await consume(celery, s.default_queue, nodes[1], on=False)
        ids = [(await submit(db, celery, actor="distill", kwargs={
            "chunks": CHUNKS, "chunk_seconds": CHUNK_SECONDS}))["id"] for _ in range(TASKS)]

        async def row(task_id: uuid.UUID) -> Any:
            found = await db.get_task(task_id)
            assert found is not None
            return found

        async def under_way() -> bool:
            rows = [await row(t) for t in ids]
            return all(r["status"] == "running" and r["done"] >= AHEAD for r in rows)

        await until(under_way, 60, "tasks under way", interval=0.05)
        await consume(celery, s.default_queue, nodes[1], on=True)
        t0, p0 = time.time(), time.perf_counter()
        os.kill(first.pid, signal.SIGTERM)
        exited = asyncio.create_task(asyncio.to_thread(first.proc.wait, 60))  # type: ignore[union-attr]
        going_on: dict[uuid.UUID, float] = {}

        async def all_going_on() -> bool:
            for t in ids:
                now = await row(t)
                if t not in going_on and now["attempt"] >= 2 and now["started_at"]:
                    going_on[t] = (now["started_at"].timestamp() - t0) * 1000
            return len(going_on) == len(ids)

        await until(all_going_on, 60, "tasks going on elsewhere", interval=0.01)
        await exited
        exit_ms = (time.perf_counter() - p0) * 1000

        async def all_done() -> bool:
            return all([(await row(t))["status"] == "succeeded" for t in ids])

        await until(all_done, CHUNKS * CHUNK_SECONDS + 60, "tasks done", interval=0.2)
        redone = []
        for t in ids:
            first_attempt = sum(1 for r in await db.list_results(t) if r["attempt"] == 1)
            found = restored(second.log_path, str(t))
            redone.append(first_attempt - found if found is not None else first_attempt)
        return {"continue_ms": list(going_on.values()), "exit_ms": exit_ms, "redone": redone,
                "rc": first.proc.returncode if first.proc else None}
    finally:
        for c in children:
            await asyncio.to_thread(c.stop)


async def run_ours(servers: Servers, out_dir: Path, rounds: int, grace: float,
                   say: Say) -> dict[str, Any]:
    stack = await Stack.create(servers, out_dir, drain_grace=grace)
    db = await Db.connect(stack.settings.database_url, min_size=1, max_size=4)
    celery = make_celery(stack.settings)
    out: dict[str, Any] = {"continue": Dist(), "exit": Dist(), "redone": [], "rc": []}
    try:
        for rnd in range(rounds):
            got = await _ours_round(stack, db, celery, rnd)
            for v in got["continue_ms"]:
                out["continue"].add(v)
            out["exit"].add(got["exit_ms"])
            out["redone"] += got["redone"]
            out["rc"].append(got["rc"])
            say(f"ours, round {rnd + 1}: continue max {max(got['continue_ms']):.0f} ms, "
                f"exit {got['exit_ms']:.0f} ms, redone {got['redone']}")
    finally:
        celery.close()
        await db.close()
        await stack.destroy()
    return out


def _summary(got: dict[str, Any]) -> dict[str, Any]:
    return {"continue": got["continue"].to_json(), "exit": got["exit"].to_json(),
            "redone_per_task": got["redone"], "redone_total": sum(got["redone"]),
            "exit_status": got["rc"]}


async def run(servers: Servers, out_dir: Path, *, rounds: int = ROUNDS, grace: float = GRACE,
              say: Say = print) -> dict[str, Any]:
    ours = await run_ours(servers, out_dir / "ours", rounds, grace, say)
    plain = await run_plain(servers, out_dir / "plain", rounds=rounds, grace=grace,
                            tasks=TASKS, chunks=CHUNKS, chunk_seconds=CHUNK_SECONDS,
                            ahead=AHEAD, say=say)
    return {"grace_s": grace, "tasks_per_round": TASKS, "rounds": rounds, "chunks": CHUNKS,
            "chunk_seconds": CHUNK_SECONDS, "chunks_done_before_sigterm": AHEAD,
            "ours": _summary(ours), "celery_soft_shutdown": _summary(plain)}


def table(data: dict[str, Any]) -> str:
    rows = ["| | continue p50 | continue p99 | worker gone (max) | chunks redone |",
            "| --- | --- | --- | --- | --- |"]
    for label, key in (("ours (drain)", "ours"), ("Celery soft shutdown", "celery_soft_shutdown")):
        d = data[key]
        rows.append(f"| {label} | {d['continue']['p50'] / 1000:.2f} s | "
                    f"{d['continue']['p99'] / 1000:.2f} s | {d['exit']['max'] / 1000:.2f} s | "
                    f"{d['redone_total']} ({d['continue']['n']} tasks) |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--grace", type=float, default=GRACE)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "drain")
    args = parser.parse_args()
    servers = Servers.open()
    try:
        data = asyncio.run(run(servers, args.out, rounds=args.rounds, grace=args.grace))
    finally:
        servers.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drain.json").write_text(json.dumps(data, indent=2))
    print(table(data))


if __name__ == "__main__":
    main()
