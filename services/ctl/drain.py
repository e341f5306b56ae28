"""`taskctl drain NODE`: before maintenance of a host, its worker hands its tasks to the
others and stops.

The same request as `POST /api/v1/workers/{node}/drain` (shared/drain.py). The worker takes
no new message, each running task saves its checkpoint and goes back to the queue (a task
that does not stop in time is killed and re-queued all the same), and the worker exits 0
within its DRAIN_GRACE. This command waits for that and says what became of the tasks it
was running; under `make run` or systemd's `Restart=on-failure` the worker stays stopped
until it is started again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from rich.console import Console

from services.ctl.context import CtlContext
from services.ctl.errors import bad_input, failed
from shared.drain import WorkerNotFound, announced_workers, request_drain

# Beyond the worker's DRAIN_GRACE (taken as ours): its Celery shutdown, a loaded host.
WAIT_MARGIN = 15.0
POLL = 0.2


def add_parser(sub: Any) -> None:
    p = sub.add_parser("drain", help="a worker hands its tasks to the others and stops")
    p.add_argument("node", help="the worker's node name, a unique prefix of it, or its host")
    p.add_argument("--no-wait", action="store_true",
                   help="return once the worker got the request")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for it to exit (default: DRAIN_GRACE + 15)")
    p.add_argument("--json", action="store_true")


def resolve_node(wanted: str, workers: dict[str, dict[str, Any]]) -> str:
    """An announced node: named exactly, by a unique prefix, or by its host."""
    if wanted in workers:
        return wanted
    found = [n for n, info in workers.items()
             if n.startswith(wanted) or n.partition("@")[2] == wanted
             or info.get("host") == wanted]
    if len(found) == 1:
        return found[0]
    known = ", ".join(sorted(workers)) or "none"
    if not found:
        raise bad_input(f"no running worker {wanted!r} (running: {known})")
    raise bad_input(f"{wanted!r} matches {len(found)} workers: {', '.join(sorted(found))}")


async def run(ctx: CtlContext, console: Console, args: argparse.Namespace) -> int:
    node = resolve_node(args.node, await announced_workers(ctx.redis, ctx.keys))
    running = [r["id"] for r in await ctx.db.active_rows() if r["worker"] == node]
    started = time.monotonic()
    try:
        receivers = await request_drain(ctx.redis, ctx.keys, node, by=ctx.actor)
    except WorkerNotFound as exc:
        raise failed(f"{exc}: it is announced, but none of its processes listens") from None
    out: dict[str, Any] = {"node": node, "receivers": receivers, "running": len(running)}
    if args.no_wait:
        _emit(console, args.json, out, f"{node}: draining ({len(running)} running task(s))")
        return 0
    if not args.json:
        console.print(f"{node}: draining {len(running)} running task(s) ...")
    timeout = args.timeout if args.timeout is not None else (
        ctx.settings.drain_grace + WAIT_MARGIN)
    gone = await _gone(ctx, node, timeout)
    out.update(await _fates(ctx, running, node))
    out["exited"], out["took_s"] = gone, round(time.monotonic() - started, 2)
    if not gone:
        _emit(console, args.json, out, f"{node}: still running after {timeout:.0f}s")
        return 1
    _emit(console, args.json, out,
          f"{node}: stopped after {out['took_s']}s; {out['handed_back']} task(s) back in the "
          f"queue or running elsewhere, {out['ended']} ended")
    return 0


async def _gone(ctx: CtlContext, node: str, timeout: float) -> bool:
    """True once the worker's main process has left the workers it announced (at exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await ctx.redis.hexists(ctx.keys.workers, node):
            return True
        await asyncio.sleep(POLL)
    return False


async def _fates(ctx: CtlContext, ids: list[uuid.UUID], node: str) -> dict[str, int]:
    handed_back = ended = 0
    for task_id in ids:
        row = await ctx.db.get_task(task_id)
        if row is None:
            continue
        if row["status"] == "queued" or row["worker"] != node:
            handed_back += 1
        elif row["status"] not in ("running", "cancelling", "pausing"):
            ended += 1
    return {"handed_back": handed_back, "ended": ended}


def _emit(console: Console, as_json: bool, data: dict[str, Any], line: str) -> None:
    if as_json:
        print(json.dumps(data))
    else:
        console.print(line)
