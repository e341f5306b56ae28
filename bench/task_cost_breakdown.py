"""Where one short task's time and round trips go inside a pool process: the instrumented
worker (bench/task_cost_probe.py) run alone (one task at a time: no queueing, no
contention) and under the throughput load, its lines gathered per step."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.stats import Dist

# In the order a delivery goes through them; the sub-steps of `finish` after it.
STEPS = ("guard", "claim", "begin", "first_beat_registry", "first_beat_report", "user",
         "checkpoint", "finish", "finish_db", "unsubscribe", "registry_remove", "events",
         "execute")


def read(probe_dir: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(probe_dir.glob("probe-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(lines, key=lambda d: d["t0"])


def _steps(lines: list[dict[str, Any]]) -> dict[str, Any]:
    dists: dict[str, Dist] = defaultdict(Dist)
    for d in lines:
        ms = d["ms"]
        for step in STEPS:
            dists[step].add(ms.get(step, 0.0))
        inside = sum(ms.get(s, 0.0) for s in ("guard", "claim", "begin", "finish"))
        # The task's thread waits for each of these on the loop; what `execute` has beyond
        # them and the actor's code is the thread crossings and the runtime's own Python.
        dists["crossings"].add(ms.get("execute", 0.0) - inside - ms.get("user", 0.0))
    return {k: v.to_json(with_samples=False)
            for k, v in dists.items()}


def _counts(lines: list[dict[str, Any]], table: str) -> dict[str, Any]:
    """Mean per delivery, by step and by statement (or command)."""
    by_step: dict[str, Counter[str]] = defaultdict(Counter)
    for d in lines:
        for step, counts in d[table].items():
            by_step[step].update(counts)
    n = len(lines) or 1
    out = {step: {k: round(v / n, 3) for k, v in sorted(c.items(), key=lambda kv: -kv[1])}
           for step, c in by_step.items()}
    return {"by_step": out, "total": round(sum(sum(c.values()) for c in by_step.values()) / n,
                                           3)}


def _gaps(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Between one delivery's end and the next one's start in the same pool process: what
    Celery does per task around ours (the ack, its events, taking the next message)."""
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in lines:
        by_pid[d["pid"]].append(d)
    gaps = Dist()
    for deliveries in by_pid.values():
        for a, b in zip(deliveries, deliveries[1:], strict=False):
            gaps.add((b["t0"] - a["t1"]) * 1000)
    return gaps.to_json(with_samples=False) if gaps.n else {}


def summarize(lines: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [d for d in lines if d.get("outcome") == "succeeded"]
    return {"deliveries": len(lines), "succeeded": len(ok), "ms": _steps(ok),
            "db": _counts(ok, "db"), "redis": _counts(ok, "redis"), "gap_ms": _gaps(ok)}
