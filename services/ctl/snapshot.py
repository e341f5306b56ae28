"""One look at the whole system: this host's worker processes, what Celery's workers hold,
queue lengths, task counts, and what the reaper last found. Rendered by status.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from celery import Celery

from services.ctl import procs, queues
from services.ctl.context import CtlContext
from shared.registry import lapsed_workers
from shared.states import ACTIVE

_INSPECT = ("active", "reserved", "scheduled")


@dataclass
class Snapshot:
    at: float
    host: str
    prefix: str
    workers: list[dict[str, Any]]
    processes: list[dict[str, Any]]
    celery: dict[str, dict[str, list[str]]]
    queues: dict[str, int]
    unacked: int
    unacked_index: int
    counts: dict[str, int]
    executions: dict[str, int]
    reaper: dict[str, Any]
    inconsistencies: dict[str, int]
    notes: list[str] = field(default_factory=list)
    # Running and cancelling tasks, with what their pool processes used at the last beat.
    tasks: list[dict[str, Any]] = field(default_factory=list)
    # Tasks not finished and not held (paused): queued, running, stopping, or waiting for
    # their children.
    active: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _task_ids(requests: list[dict[str, Any]]) -> list[str]:
    out = []
    for req in requests:
        req = req.get("request", req)  # scheduled entries wrap the request
        task_id = (req.get("kwargs") or {}).get("task_id")
        out.append(str(task_id or req.get("id")))
    return out


async def _celery_view(celery: Celery, nodes: list[str], timeout: float
                       ) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """Asks the workers what they hold: three broadcasts, sent concurrently (each takes a
    broker connection: three stay below the pool limit in shared.broker); naming the
    nodes lets each return as soon as all of them answered."""
    parts = await asyncio.gather(*(asyncio.to_thread(_inspect_one, celery, nodes, timeout, w)
                                   for w in _INSPECT))
    out: dict[str, dict[str, list[str]]] = {}
    notes: list[str] = []
    for what, (replies, note) in zip(_INSPECT, parts, strict=True):
        if note:
            notes.append(note)
        for node, ids in replies.items():
            out.setdefault(node, {k: [] for k in _INSPECT})[what] = ids
    return out, notes


def _inspect_one(celery: Celery, nodes: list[str], timeout: float, what: str
                 ) -> tuple[dict[str, list[str]], str | None]:
    insp = celery.control.inspect(timeout=timeout, destination=nodes or None,
                                  limit=len(nodes) or None)
    try:
        replies = getattr(insp, what)() or {}
    except Exception as exc:  # a broker hiccup must not hide the rest of the status
        return {}, f"celery inspect {what} failed: {exc}"
    return {node: _task_ids(reqs or []) for node, reqs in replies.items()}, None


async def _reaper(ctx: CtlContext) -> tuple[dict[str, Any], dict[str, int]]:
    leader = await ctx.redis.get(ctx.keys.leader)
    # taskctl's client decodes replies (decode_responses), so keys and values are str
    raw = cast(dict[str, str], await ctx.redis.hgetall(ctx.keys.reaper_status))
    found = {k.split(":", 1)[1]: int(float(v)) for k, v in raw.items() if k.startswith("found:")}
    last = float(raw["last_pass_at"]) if raw.get("last_pass_at") else None
    return {"leader": leader, "reported_by": raw.get("leader"), "last_pass_at": last,
            "last_pass_age_s": round(time.time() - last, 1) if last else None,
            "last_pass_ms": float(raw["last_pass_ms"]) if raw.get("last_pass_ms") else None,
            }, found


def _task(row: Any, now: float) -> dict[str, Any]:
    beat = row["heartbeat_at"]
    return {"id": str(row["id"]), "actor": row["actor"], "status": row["status"],
            "attempt": row["attempt"], "worker": row["worker"], "pid": row["pid"],
            "rss_bytes": row["rss_bytes"], "cpu_percent": row["cpu_percent"],
            "heartbeat_age_s": round(now - beat.timestamp(), 1) if beat else None}


def _hide_lapsed(host: procs.HostWorkers, lapsed: set[str]) -> list[str]:
    """Drops the records of workers whose main process stopped renewing its liveness (kill
    -9, host lost), unless it runs here and is found alive; returns their nodes."""
    hidden = [e.node for e in host.entries
              if e.node in lapsed and host.states.get(e.node) != "alive"]
    host.entries = [e for e in host.entries if e.node not in hidden]
    for node in hidden:
        host.states.pop(node, None)
    return hidden


async def take(ctx: CtlContext, *, inspect_timeout: float = 1.0, inspect: bool = True
               ) -> Snapshot:
    keys = ctx.keys
    host = await procs.find_local(ctx.redis, keys, ctx.hostname)
    hidden = _hide_lapsed(host, await lapsed_workers(ctx.redis, keys))
    procs.prime_cpu(host.processes)
    cpu_from = time.monotonic()
    # Celery's view of dead workers would only cost a timeout: ask the others.
    nodes = [e.node for e in host.entries if host.states.get(e.node) in ("alive", "remote")]
    celery_task = (asyncio.create_task(_celery_view(ctx.celery, nodes, inspect_timeout))
                   if inspect and nodes else None)
    names = await queues.known_queues(ctx.settings, ctx.db, ctx.redis)
    lengths = await queues.lengths(ctx.redis, keys, names)
    counts = await ctx.db.counts()
    now = time.time()
    live = await ctx.redis.zcount(keys.executions, now, "+inf")
    expired = await ctx.redis.zcount(keys.executions, "-inf", f"({now}")
    reaper, found = await _reaper(ctx)
    celery_view, notes = await celery_task if celery_task else ({}, [])
    if not nodes:
        notes.append("no live worker is recorded in Redis")
    if hidden:
        notes.append(f"not shown: {len(hidden)} worker(s) gone without a word (no liveness "
                     f"for over {ctx.settings.heartbeat_timeout:g}s): {', '.join(hidden)}")
    running = await ctx.db.active_rows()
    # CPU% needs an interval between two readings; the queries above usually give one.
    await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - cpu_from)))
    now = time.time()
    workers = []
    for e in host.entries:
        held = celery_view.get(e.node)
        workers.append({"node": e.node, "host": e.host, "pid": e.pid,
                        "state": host.states.get(e.node, "unknown"),
                        "concurrency": e.concurrency, "started_at": e.started_at,
                        "replied": held is not None,
                        **{k: len(held[k]) if held else None for k in _INSPECT}})
    return Snapshot(
        at=now, host=ctx.hostname, prefix=ctx.settings.key_prefix, workers=workers,
        processes=[procs.snapshot(p, now) for p in host.processes], celery=celery_view,
        queues=lengths.ready, unacked=lengths.unacked, unacked_index=lengths.unacked_index,
        counts=counts, executions={"live": live, "expired": expired}, reaper=reaper,
        inconsistencies=found, notes=notes, tasks=[_task(r, now) for r in running],
        active=sum(counts.get(s.value, 0) for s in ACTIVE))
