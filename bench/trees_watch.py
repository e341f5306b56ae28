"""What the job-tree bench watches after our cancel of a root (bench/trees_ours.py): the
children's rows, the workers' queue and live executions while they settle, then the
workers' log lines and the rows of the children that were running.

Times are milliseconds from `time.time()` taken just before the cancel call (`t0`); rows'
times (`started_at`, `finished_at`) and log lines' timestamps are the same host clock."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.logtail import LogTail
from bench.stats import Dist
from shared.keys import Keys
from shared.states import TERMINAL

POLL = 0.02
_TERMINAL = sorted(str(s) for s in TERMINAL)
_COUNTED = {"dropped_by_guard": 'task.dropped"', "discarded_as_revoked": "Discarding revoked task",
            "revoke_backend_warnings": "Failed to mark task"}


class Logs:
    """The JSON logs of every host's worker, read as they grow; each record found gets
    its host's name (the log's folder)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.tails = [(p.parent.name, LogTail(p)) for p in paths]

    def count(self, start: str) -> int:
        """Lines whose event starts with `start`, in every log from its beginning."""
        needle = f'"event": "{start}'
        total = 0
        for path in self.paths:
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    total += sum(needle in line for line in fh)
            except FileNotFoundError:
                continue
        return total

    def spans(self, start: str, t0: float) -> dict[str, dict[str, float]]:
        """Per host, the first and the last line since t0 whose event starts with `start`
        (ms from t0), and how many."""
        needle = f'"event": "{start}'
        out: dict[str, dict[str, float]] = {}
        for path in self.paths:
            times = []
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        if needle in line:
                            at = datetime.fromisoformat(json.loads(line)["timestamp"])
                            if at.timestamp() >= t0:
                                times.append((at.timestamp() - t0) * 1000)
            except (FileNotFoundError, ValueError, KeyError):
                continue
            if times:
                out[path.parent.name] = {"first_ms": round(min(times), 1),
                                         "last_ms": round(max(times), 1), "lines": len(times)}
        return out

    def counts(self) -> dict[str, int]:
        """How queued messages of cancelled tasks leave, and what that logs: our guard in
        the pool process (`task.dropped`), Celery's consumer discarding an id the reaper
        revoked, and the warning Celery's revoke handler logs for every id it cannot mark
        revoked in a result backend (the product configures none)."""
        return {k: self.count(v) for k, v in _COUNTED.items()}

    def find(self, event: str, task_id: str) -> dict[str, Any] | None:
        for host, tail in self.tails:
            if (record := tail.find(event, task_id)) is not None:
                record.setdefault("host", host)
                return record
        return None


@dataclass
class Settle:
    """First moments (ms from t0) at which each condition held, polled every POLL s."""

    t0: float
    grace_s: float
    timeline: dict[str, float | None] = field(default_factory=lambda: {
        "running_rows_terminal_ms": None, "all_children_terminal_ms": None,
        "no_live_execution_ms": None, "queue_empty_ms": None, "nothing_unacked_ms": None})
    open_at_grace: int | None = None
    polls: int = 0

    def _mark(self, key: str, holds: bool, now: float) -> None:
        if holds and self.timeline[key] is None:
            self.timeline[key] = round(now, 1)

    async def run(self, pool: Any, redis: aioredis.Redis, keys: Keys, queue: str,
                  root: uuid.UUID, running: list[uuid.UUID], *, limit_s: float) -> None:
        """Until every child is terminal, no execution is registered, and the queue is empty
        with nothing unacknowledged; or `limit_s` after t0."""
        t = self.timeline
        while (now := (time.time() - self.t0) * 1000) < limit_s * 1000:
            row = await pool.fetchrow(
                "SELECT count(*) FILTER (WHERE status <> ALL($3::text[])) AS open, "
                "count(*) FILTER (WHERE id = ANY($2::uuid[]) AND status <> ALL($3::text[])) "
                "AS running_open FROM tasks WHERE parent_id = $1", root, running, _TERMINAL)
            async with redis.pipeline(transaction=False) as pipe:
                pipe.llen(keys.celery_key(queue))
                pipe.hlen(keys.celery_key("unacked"))
                pipe.zcard(keys.executions)
                queued, unacked, live = await pipe.execute()
            self.polls += 1
            self._mark("running_rows_terminal_ms", row["running_open"] == 0, now)
            self._mark("all_children_terminal_ms", row["open"] == 0, now)
            self._mark("no_live_execution_ms", live == 0, now)
            self._mark("queue_empty_ms", queued == 0, now)
            self._mark("nothing_unacked_ms", queued == 0 and unacked == 0, now)
            if self.open_at_grace is None and now >= self.grace_s * 1000:
                self.open_at_grace = int(row["open"])
            if all(v is not None for v in t.values()):
                break
            await asyncio.sleep(POLL)
        if self.open_at_grace is None:
            self.open_at_grace = 0 if t["all_children_terminal_ms"] is not None else None


async def running_ends(pool: Any, logs: Logs, t0: float, running: list[uuid.UUID],
                       wait_s: float = 5.0) -> dict[str, Any]:
    """For each child running at the call: `task.cancel_observed` and `task.finished` (its
    process free again) from its worker's log, and its row's `finished_at`; as
    distributions from t0, with how the token was set and what was saved."""
    ids = [str(r) for r in running]
    deadline = time.monotonic() + wait_s
    while True:
        observed = {i: logs.find("task.cancel_observed", i) for i in ids}
        finished = {i: logs.find("task.finished", i) for i in ids}
        complete = all(observed.values()) and all(finished.values())
        if complete or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    rows = await pool.fetch(
        "SELECT t.id, t.status, t.outcome, t.done, extract(epoch FROM t.finished_at)::float8 "
        "AS finished, extract(epoch FROM t.cancel_deadline)::float8 AS deadline, "
        "(SELECT count(*) FROM task_results r WHERE r.task_id = t.id) AS saved "
        "FROM tasks t WHERE t.id = ANY($1::uuid[])", running)
    obs, fin, term, stopped = Dist(), Dist(), Dist(), Dist()
    via: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for i in ids:
        if (o := observed[i]) is not None:
            obs.add((o["epoch"] - t0) * 1000)
            via[str(o.get("via"))] = via.get(str(o.get("via")), 0) + 1
        if (f := finished[i]) is not None:
            fin.add((f["epoch"] - t0) * 1000)
            hosts[str(f.get("host"))] = hosts.get(str(f.get("host")), 0) + 1
    by_id = {str(r["id"]): r for r in rows}
    # Against each row's own deadline (the subtree cancel's DB time + CANCEL_GRACE): > 0 late.
    past = Dist()
    for i in ids:
        r, f = by_id.get(i), finished[i]
        if r is not None and r["finished"] is not None:
            term.add((r["finished"] - t0) * 1000)
        if r is not None and r["finished"] is not None and f is not None:
            end = max(r["finished"], f["epoch"])
            stopped.add((end - t0) * 1000)
            if r["deadline"] is not None:
                past.add((end - r["deadline"]) * 1000)
    # Kills by the worker's guardian: the pool process that ran the child, SIGKILLed once the
    # row's deadline passed; one after that child's own `task.finished` hit a process that
    # had already let go of it.
    kills = {i: k for i in ids if (k := logs.find("worker.guardian_killed", i)) is not None}
    after_finish = 0
    for i, kill in kills.items():
        done = finished[i]
        if done is not None and kill["epoch"] > done["epoch"]:
            after_finish += 1
    ends: dict[str, int] = {}
    for r in rows:
        key = f"{r['status']}/{r['outcome']}"
        ends[key] = ends.get(key, 0) + 1
    return {
        "observed_ms": obs.to_json(), "finished_ms": fin.to_json(),
        "row_terminal_ms": term.to_json(), "stopped_ms": stopped.to_json(),
        "stopped_vs_deadline_ms": past.to_json(),
        "stopped_after_deadline": sum(1 for v in past.samples if v > 0),
        "not_observed": sum(1 for v in observed.values() if v is None),
        "not_finished": sum(1 for v in finished.values() if v is None),
        "via": via, "finished_by_host": dict(sorted(hosts.items())), "ends": ends,
        "guardian_kills": len(kills), "guardian_kills_after_finished": after_finish,
        # What `record_kill` found for each (None: the row had already ended).
        "guardian_kill_status": _counted(str(k.get("status")) for k in kills.values()),
        "chunks_done": sum(int(r["done"]) for r in rows),
        "chunks_saved": sum(int(r["saved"]) for r in rows),
    }


def _counted(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def logged(path: Path, event: str, t0: float, t1: float) -> list[dict[str, Any]]:
    """The `event` lines of a JSON log written between t0 and t1 (epoch seconds)."""
    out = []
    needle = f'"event": "{event}"'
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if needle not in line:
                    continue
                try:
                    record = json.loads(line)
                    at = datetime.fromisoformat(record["timestamp"]).timestamp()
                except (ValueError, KeyError):
                    continue
                if t0 <= at <= t1:
                    out.append(record)
    except FileNotFoundError:
        pass
    return out


async def children_after(pool: Any, root: uuid.UUID, t0: float, answered_at: float
                         ) -> dict[str, Any]:
    """How every child ended, and which started after the call began or after its answer."""
    ends = await pool.fetch(
        "SELECT status, coalesce(outcome, '') AS outcome, count(*) AS n FROM tasks "
        "WHERE parent_id = $1 GROUP BY 1, 2 ORDER BY n DESC", root)
    late = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE started_at > to_timestamp($2)) AS after_call, "
        "count(*) FILTER (WHERE started_at > to_timestamp($3)) AS after_answer, "
        "count(*) FILTER (WHERE status <> ALL($4::text[])) AS open, "
        "count(*) FILTER (WHERE attempt > 0) AS ever_started "
        "FROM tasks WHERE parent_id = $1", root, t0, answered_at, _TERMINAL)
    root_row = await pool.fetchrow(
        "SELECT status, outcome, cancel_reason FROM tasks WHERE id = $1", root)
    audit = await pool.fetchrow(
        "SELECT cancelled, cancelling, cardinality(task_ids) AS ids FROM cancel_audit "
        "WHERE scope->>'tree' = $1 ORDER BY id DESC LIMIT 1", str(root))
    return {
        "ends": [{"status": r["status"], "outcome": r["outcome"] or None, "n": r["n"]}
                 for r in ends],
        "started_after_call": int(late["after_call"]),
        "started_after_answer": int(late["after_answer"]),
        "left_non_terminal": int(late["open"]), "ever_started": int(late["ever_started"]),
        "root": dict(root_row) if root_row else None,
        "audit": dict(audit) if audit else None,
    }
