"""The plain Celery half of the drain bench (bench/drain.py): the same rounds, on the long
chunked task of bench/drain_celery.py, stopped by Celery 5.5+'s soft shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

from bench.drain_celery import ChunkMarks, create_app
from bench.poll import until
from bench.procs import ROOT, Child
from bench.stack import Servers, delete_prefix
from bench.stats import Dist

QUEUE = "drain"


async def start_worker(celery: Celery, child: Child, node: str, concurrency: int) -> None:
    async def ready() -> bool:
        child.check()
        replies = await asyncio.to_thread(celery.control.ping, destination=[node], timeout=0.5)
        return bool(replies) and len(child.live_children()) >= concurrency

    child.start()
    await until(ready, 60, f"{node} ready")


async def consume(celery: Celery, queue: str, node: str, on: bool) -> None:
    call = celery.control.add_consumer if on else celery.control.cancel_consumer
    replies = await asyncio.to_thread(call, queue, destination=[node], reply=True, timeout=5)
    if not replies:
        raise TimeoutError(f"{node} did not answer")


def _child(name: str, node: str, env: dict[str, str], out_dir: Path) -> Child:
    return Child(name, "bench.drain_celery", ["-n", node], env, out_dir / f"{name}.out")


async def _round(servers: Servers, out_dir: Path, rnd: int, *, grace: float, tasks: int,
                 chunks: int, chunk_seconds: float, ahead: int) -> dict[str, Any]:
    prefix = f"bench-drain-plain-{uuid.uuid4().hex[:10]}"
    app, marks = create_app(servers.redis_url, prefix, QUEUE, grace)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "REDIS_URL": servers.redis_url, "BENCH_PREFIX": prefix, "BENCH_QUEUE": QUEUE,
           "SOFT_TIMEOUT": str(grace), "WORKER_CONCURRENCY": str(tasks),
           # What Celery's documentation advises for the soft shutdown on SIGTERM.
           "REMAP_SIGTERM": "SIGQUIT"}
    host = socket.gethostname()
    nodes = [f"plain{rnd}{side}{uuid.uuid4().hex[:6]}@{host}" for side in "ab"]
    children = [_child(f"plain-{rnd}-{side}", node, env, out_dir)
                for side, node in zip("ab", nodes, strict=True)]
    first = children[0]
    try:
        await asyncio.gather(*(start_worker(app, c, n, tasks)
                               for c, n in zip(children, nodes, strict=True)))
        await consume(app, QUEUE, nodes[1], on=False)
        ids = [app.send_task("bench.chunked", args=[chunks, chunk_seconds], queue=QUEUE).id
               for _ in range(tasks)]

        async def under_way() -> bool:
            return all([len(await asyncio.to_thread(marks.chunk_counts, t)) >= ahead
                        for t in ids])

        await until(under_way, 60, "plain tasks under way", interval=0.05)
        await consume(app, QUEUE, nodes[1], on=True)
        t0, p0 = time.time(), time.perf_counter()
        os.kill(first.pid, signal.SIGTERM)
        exited = asyncio.create_task(asyncio.to_thread(first.proc.wait, grace + 60))  # type: ignore[union-attr]
        going_on: dict[str, float] = {}

        async def all_going_on() -> bool:
            for t in ids:
                starts = await asyncio.to_thread(marks.starts, t)
                if t not in going_on and len(starts) >= 2:
                    going_on[t] = (starts[1][1] - t0) * 1000
            return len(going_on) == len(ids)

        await until(all_going_on, grace + 60, "plain tasks going on elsewhere", interval=0.01)
        await exited
        exit_ms = (time.perf_counter() - p0) * 1000

        async def all_done() -> bool:
            return all([await asyncio.to_thread(marks.is_finished, t) for t in ids])

        await until(all_done, chunks * chunk_seconds + 60, "plain tasks done", interval=0.2)
        redone = [sum(n - 1 for n in (await asyncio.to_thread(marks.chunk_counts, t)).values())
                  for t in ids]
        return {"continue_ms": list(going_on.values()), "exit_ms": exit_ms, "redone": redone,
                "rc": first.proc.returncode if first.proc else None}
    finally:
        for c in children:
            await asyncio.to_thread(c.stop)
        app.close()
        await delete_prefix(servers.redis_url, prefix)


async def run_plain(servers: Servers, out_dir: Path, *, rounds: int, grace: float, tasks: int,
                    chunks: int, chunk_seconds: float, ahead: int,
                    say: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"continue": Dist(), "exit": Dist(), "redone": [], "rc": []}
    for rnd in range(rounds):
        got = await _round(servers, out_dir, rnd, grace=grace, tasks=tasks, chunks=chunks,
                           chunk_seconds=chunk_seconds, ahead=ahead)
        for v in got["continue_ms"]:
            out["continue"].add(v)
        out["exit"].add(got["exit_ms"])
        out["redone"] += got["redone"]
        out["rc"].append(got["rc"])
        say(f"celery, round {rnd + 1}: continue max {max(got['continue_ms']):.0f} ms, "
            f"exit {got['exit_ms']:.0f} ms, redone {got['redone']}")
    return out


__all__ = ["ChunkMarks", "run_plain"]
