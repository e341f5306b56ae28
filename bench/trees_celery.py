"""Job trees on plain Celery: a tree of N long members cancelled as one, the way Celery offers
it, while some members run. The Celery side of the job-tree cancel comparison.

Two cases, each on a fresh prefork worker (our bench worker's concurrency, late
acknowledgement, Redis broker and result backend under a key prefix and queue of its own;
bench/trees_celery_app.py):
- group: `group(N members).apply_async()`, then `GroupResult.revoke(terminate=True,
  signal='SIGKILL')`;
- chord: `chord(header of N members)(callback)`, then `GroupResult.revoke(terminate=True)`
  on the header (SIGTERM, Celery's default signal).
Each member sleeps in steps of 50 ms for MEMBER_SECONDS and marks its start and its own end
in Redis. The revoke is sent once every pool process runs a member. Then, until nothing is
left to happen (bench/trees_celery_watch.py), the bench polls every 10 ms: members running
(a start mark without an end mark whose pool process lives), the queue and the
unacknowledged messages, and the chord's callback state (for at most CALLBACK_WAIT more).

`python -m bench.trees_celery [--quick] [--members N]` runs it alone and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery, chord, group
from celery.result import AsyncResult, GroupResult
from celery.worker import state as worker_state

from bench.drain_plain import start_worker
from bench.procs import ROOT, Child, rss_mib
from bench.stack import Servers, delete_prefix
from bench.trees_celery_app import CALLBACK, MEMBER, TreeMarks, create_app
from bench.trees_celery_watch import (
    Watch,
    backend_states,
    callback_detail,
    chord_parts_counted,
    live_members,
)
from shared.settings import Settings
from tests.support import eventually

MEMBERS = 10_000
QUICK_MEMBERS = 1_000
MEMBER_SECONDS = 30.0
STEP = 0.05
CALLBACK_WAIT = 30.0
CASES = ("group", "chord")
Say = Callable[[str], None]


def our_concurrency() -> int:
    """Pool processes of our bench worker (bench/stack.py runs it with the default setting)."""
    return Settings.from_env({}).worker_concurrency


async def run(servers: Servers, out_dir: Path, *, members: int = MEMBERS,
              concurrency: int | None = None, member_seconds: float = MEMBER_SECONDS,
              callback_wait: float = CALLBACK_WAIT, seed: int = 20261130,
              say: Say = print) -> dict[str, Any]:
    """Runs both cases and returns their figures.

    Returned: {"members", "concurrency", "member_seconds", "callback_wait_s",
    "revoked_ids_max" (the worker's limit on remembered revoked ids), "group": {...},
    "chord": {...}}, each case with:
    - enqueue_ms: the apply_async of the tree; started_before_revoke: members started then;
    - revoke_call_ms: GroupResult.revoke(...) until it returned (it does not wait for replies);
    - started_after_revoke: members whose start mark is later than the revoke's return;
    - no_member_running_ms: revoke call -> no member running (ms, from the call's start);
    - queue_empty_ms / unacked_empty_ms: -> the queue empty / nothing left unacknowledged
      (None: never, within the watch); settled_ms: when the watch saw all of that;
    - ran_to_completion: members that ended by themselves; killed: started, never ended;
    - unacked_left: messages still unacknowledged at the end (Redis would redeliver them
      after the visibility timeout); restarted: times a member ran again after none did;
    - revoked_ids_held: the worker's revoked ids (`inspect().revoked()`);
      active_at_end: its `inspect().active()` count; worker_rss_mib: {"before", "after"} of
      its main process; pool_processes_replaced: pool pids gone since the revoke;
    - backend_states: each member's state in the result backend, counted;
    - chord only: callback ("fired", "errored" or "hung" after callback_wait s once the rest
      settled), callback_ms, callback_detail, chord_parts_counted.
    """
    concurrency = concurrency or our_concurrency()
    rng = random.Random(seed)
    out: dict[str, Any] = {"members": members, "concurrency": concurrency,
                           "member_seconds": member_seconds, "callback_wait_s": callback_wait,
                           "revoked_ids_max": worker_state.REVOKES_MAX}
    for kind in CASES:
        out[kind] = await _case(kind, servers, out_dir, members=members,
                                concurrency=concurrency, member_seconds=member_seconds,
                                callback_wait=callback_wait, rng=rng)
        say(_line(kind, out[kind]))
    return out


async def _case(kind: str, servers: Servers, out_dir: Path, *, members: int, concurrency: int,
                member_seconds: float, callback_wait: float, rng: random.Random
                ) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    prefix, queue = f"bench-trees-celery-{tag}", f"trees-{tag}"
    node = f"trees{kind}{tag}@{socket.gethostname()}"
    app, marks = create_app(servers.redis_url, prefix, queue)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "REDIS_URL": servers.redis_url, "BENCH_PREFIX": prefix, "BENCH_QUEUE": queue,
           "WORKER_CONCURRENCY": str(concurrency)}
    child = Child(f"trees-celery-{kind}", "bench.trees_celery_app", ["-n", node], env,
                  out_dir / f"trees-celery-{kind}.out")
    try:
        await start_worker(app, child, node, concurrency)
        return await asyncio.to_thread(
            _measure, kind, app, marks, child, node, queue, members=members,
            concurrency=concurrency, member_seconds=member_seconds,
            callback_wait=callback_wait, rng=rng)
    finally:
        await asyncio.to_thread(child.stop)
        app.close()
        await delete_prefix(servers.redis_url, prefix)


def _enqueue(kind: str, app: Celery, queue: str, members: int, member_seconds: float
             ) -> tuple[GroupResult, AsyncResult | None]:
    sigs = [app.signature(MEMBER, args=(member_seconds, STEP), queue=queue)
            for _ in range(members)]
    if kind == "group":
        return group(sigs, app=app).apply_async(), None
    callback = chord(sigs, app=app)(app.signature(CALLBACK, queue=queue))
    header = callback.parent
    assert isinstance(header, GroupResult), header
    return header, callback


def _measure(kind: str, app: Celery, marks: TreeMarks, child: Child, node: str, queue: str, *,
             members: int, concurrency: int, member_seconds: float, callback_wait: float,
             rng: random.Random) -> dict[str, Any]:
    rss_before = rss_mib(child.pid)
    p = time.perf_counter()
    header, callback = _enqueue(kind, app, queue, members, member_seconds)
    enqueue_ms = (time.perf_counter() - p) * 1000
    eventually(lambda: live_members(marks, child) >= concurrency, timeout=60,
               interval=0.01, what="every pool process running a member")
    time.sleep(rng.uniform(0.02, 0.12))
    started_before = marks.count("started")
    pool_before = {p.pid for p in child.live_children()}
    signal = "SIGKILL" if kind == "group" else None
    p0 = time.perf_counter()
    header.revoke(terminate=True, signal=signal)
    revoke_call_ms = (time.perf_counter() - p0) * 1000
    returned_at = time.time()
    watch = Watch(marks, child, queue, p0, callback)
    watch.run(deadline_s=member_seconds + 90, callback_wait_s=callback_wait)
    started = marks.starts()
    completed = marks.count("completed")
    inspect = app.control.inspect(destination=[node], timeout=5)
    revoked = (inspect.revoked() or {}).get(node)
    active = (inspect.active() or {}).get(node)
    out: dict[str, Any] = {
        "signal": signal or "SIGTERM (default)",
        "enqueue_ms": round(enqueue_ms, 1), "started_before_revoke": started_before,
        "revoke_call_ms": round(revoke_call_ms, 3),
        "started_after_revoke": sum(1 for _, at in started.values() if at > returned_at),
        **{k: None if v is None else round(v, 1) for k, v in watch.timeline.items()},
        "ran_to_completion": completed, "killed": len(started) - completed,
        "unacked_left": int(marks.client.hlen(f"{marks.prefix}:unacked")),
        "restarted": watch.restarted,
        "revoked_ids_held": None if revoked is None else len(revoked),
        "active_at_end": None if active is None else len(active),
        "worker_rss_mib": {"before": _round(rss_before), "after": _round(rss_mib(child.pid))},
        "pool_processes_replaced": len(pool_before - {p.pid for p in child.live_children()}),
        "backend_states": backend_states(app, [r.id for r in header.results]),
    }
    if callback is not None:
        out.update(callback=watch.callback_outcome, callback_detail=callback_detail(callback),
                   chord_parts_counted=chord_parts_counted(app, header))
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(value: float | None) -> str:
    return "never" if value is None else f"{value:,.0f} ms"


def _line(kind: str, d: dict[str, Any]) -> str:
    line = (f"celery {kind}: revoke call {d['revoke_call_ms']:.1f} ms, no member running after "
            f"{_ms(d['no_member_running_ms'])}, queue empty after {_ms(d['queue_empty_ms'])}, "
            f"started after revoke {d['started_after_revoke']}, "
            f"completed {d['ran_to_completion']}")
    if "callback" in d:
        line += f", callback {d['callback']} ({_ms(d['callback_ms'])})"
    return line


def table(data: dict[str, Any]) -> str:
    g, c = data["group"], data["chord"]

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | {fn(g)} | {fn(c)} |"

    def callback(d: dict[str, Any]) -> str:
        if "callback" not in d:
            return "—"
        detail = d["callback_detail"].get("error", d["callback_detail"]["state"])
        return f"{d['callback']} after {_ms(d['callback_ms'])} ({detail})"

    return "\n".join([
        f"{data['members']:,} members, {data['concurrency']} pool processes, members sleep "
        f"{data['member_seconds']:g} s in {STEP * 1000:.0f} ms steps",
        "", "| | group, revoke(terminate, SIGKILL) | chord header, revoke(terminate) |",
        "| --- | --- | --- |",
        row("enqueue the tree", lambda d: _ms(d["enqueue_ms"])),
        row("members running at the revoke", lambda d: str(d["started_before_revoke"])),
        row("revoke call", lambda d: f"{d['revoke_call_ms']:.1f} ms"),
        row("members started after it returned", lambda d: str(d["started_after_revoke"])),
        row("revoke -> no member running", lambda d: _ms(d["no_member_running_ms"])),
        row("revoke -> queue empty", lambda d: _ms(d["queue_empty_ms"])),
        row("revoke -> nothing unacknowledged", lambda d: _ms(d["unacked_empty_ms"])),
        row("ran to completion anyway", lambda d: str(d["ran_to_completion"])),
        row("killed while running", lambda d: str(d["killed"])),
        row("worker's revoked ids (limit "
            f"{data['revoked_ids_max']:,})", lambda d: f"{d['revoked_ids_held']:,}"
            if d["revoked_ids_held"] is not None else "not visible"),
        row("worker RSS before -> after", lambda d: f"{d['worker_rss_mib']['before']} -> "
                                                    f"{d['worker_rss_mib']['after']} MiB"),
        row("result backend states", lambda d: ", ".join(
            f"{k} {v:,}" for k, v in sorted(d["backend_states"].items()))),
        row("callback", callback),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trees_celery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MEMBERS:,} members")
    parser.add_argument("--members", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "trees_celery")
    args = parser.parse_args()
    members = args.members or (QUICK_MEMBERS if args.quick else MEMBERS)
    servers = Servers.open()
    try:
        data = asyncio.run(run(servers, args.out, members=members))
    finally:
        servers.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trees_celery.json").write_text(json.dumps(data, indent=2))
    print(table(data))


if __name__ == "__main__":
    main()
