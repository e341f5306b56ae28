"""The fleet section's goals: reported, never asserted. A missed goal's note says where the
time or the work went, from this run's own figures."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.figures import Results, number
from bench.goals import Goal


def _fleet(results: Results) -> dict[str, Any]:
    return results.get("fleet") or {}


def _processes(f: dict[str, Any]) -> int:
    return sum(f.get("concurrency") or [])


def _not_measured(goal: str, f: dict[str, Any]) -> Goal:
    why = f.get("skipped") or f.get("error")
    return Goal(goal, "not measured" + (f" ({why})" if why else ""), None)


def _observed(results: Results) -> Goal:
    f = _fleet(results)
    goal = (f"Fleet of {_processes(f)} pool processes: cancel-all, token observed p99 < 50 ms "
            f"(from the call)")
    c = f.get("cancel_all")
    if not c or not c["latency"]["from_call_ms"].get("n"):
        return _not_measured(goal, f)
    call, event = c["latency"]["from_call_ms"], c["latency"]["from_event_ms"]
    met = call["p99"] < 50 and not c["not_observed"]
    measured = (f"p99 {call['p99']:.1f} ms (p50 {call['p50']:.1f}, max {call['max']:.1f}; "
                f"n={call['n']} of {c['running']})")
    if met:
        return Goal(goal, measured, met)
    cpu = c.get("cpu_until_observed") or {}
    parts = cpu.get("cpu_ms") or {}
    singles = (f.get("singles") or {}).get("observed_ms") or {}
    note = (
        f"Before the event leaves, the call commits its transaction through PgBouncer (the "
        f"fence row, the running rows to `cancelling`, the audit row): event sent "
        f"{number(c['event_sent_ms'])} ms after the call. Redis then hands the one event to "
        f"{c['event_receivers']} subscribers at once; from there to each `task.cancel_observed` "
        f"line took p50 {event['p50']:.1f} / p99 {event['p99']:.1f} / max {event['max']:.1f} "
        f"ms, the first and the last process {number(c['observed_spread_ms'])} ms apart. That "
        f"spread is mostly waiting for a core: {c['running']} processes woken at once on "
        f"{cpu.get('cores', '?')} cores, and those woken first already run their task's end "
        f"(the checkpoint, `finish_task`, the registry entry) while the last ones wait to be "
        f"scheduled.{_by_host(c)} Until the last line, the fleet's processes and the servers used "
        f"{number(cpu.get('total_cpu_ms'), 0)} ms of CPU in {number(cpu.get('wall_ms'), 0)} ms "
        f"(pool processes {number(parts.get('pool'), 0)}, PostgreSQL {number(parts.get('postgres'), 0)}"
        f", psutil's 10 ms resolution) with a 1-minute load average of "
        f"{c.get('load_average_1m', '?')} on the machine. A single cancel, which wakes one "
        f"process, was observed after p50 {number(singles.get('p50'))} / max "
        f"{number(singles.get('max'))} ms. What would reach it: fewer pool processes per core "
        f"(on real hosts, 33 processes share more than two cores with nothing else; expected, "
        f"not measured here), and a shorter transaction before the event: each of its "
        f"statements is a prepare and an execute round trip while PgBouncer holds a server "
        f"connection, after PgBouncer's own `SET client_encoding` (see Observations).")
    return Goal(goal, measured, met, note)


def _by_host(c: dict[str, Any]) -> str:
    hosts = c["latency"].get("from_event_by_host_ms") or {}
    if len(hosts) < 2:
        return ""
    return (" By host (started in this order): " + "; ".join(
                f"{h} p50 {d['p50']:.1f} / max {d['max']:.1f} ms" for h, d in hosts.items())
            + ".")


def _terminal(results: Results) -> Goal:
    f = _fleet(results)
    c = f.get("cancel_all")
    grace = (c or {}).get("grace_s", (f.get("settings") or {}).get("cancel_grace_s", 0.0))
    goal = (f"Fleet of {_processes(f)}: after cancel-all every row terminal within "
            f"CANCEL_GRACE + 2 s")
    if not c:
        return _not_measured(goal, f)
    done = c.get("all_terminal_ms")
    met = done is not None and done <= (grace + 2) * 1000
    measured = (f"after {done:,.0f} ms (grace {grace:g} s; {c['running']} running, "
                f"{c['queued']} queued)" if done is not None else
                f"not within {grace + 30:g} s")
    note = "" if met else (
        f"The last running row's `finished_at` came {number(c.get('running_finished_ms'))} ms "
        f"after the call; PgBouncer's clients waited {number(c['pgbouncer_client_wait_ms'])} ms in "
        f"total for one of its {(f.get('settings') or {}).get('pgbouncer_pool_size')} server "
        f"connections while every task recorded its end at once.")
    return Goal(goal, measured, met, note)


def _deliveries(results: Results) -> Goal:
    f = _fleet(results)
    d, singles = f.get("deliveries") or {}, f.get("singles") or {}
    goal = (f"One cancel reaches O(1) subscribers at {_processes(f)} pool processes "
            f"(its task's channel and its worker's: 2)")
    if "numsub" not in d or not singles.get("cancels"):
        return _not_measured(goal, f)
    sub = d["numsub"]
    per = singles["receivers_per_cancel"]
    met = per <= 2 and sub["task"] + sub["node"] <= 2
    wide = d["fleet_channel"]
    measured = (f"{per:g} receivers per cancel over {singles['cancels']} cancels (PUBLISH's "
                f"answers; NUMSUB task {sub['task']} + worker {sub['node']}), against "
                f"{sub['fleet']} on the fleet-wide channel; bytes sent per event "
                f"{d['single_cancel_channels']['bytes_per_event']:,} vs "
                f"{wide['bytes_per_event']:,}")
    note = "" if met else (
        "More than one process listens on a task's channel, or the worker channel has more "
        "than its guardian: a process that stopped listening after its task ended would "
        "leave a subscription behind (Sidecar.forget).")
    return Goal(goal, measured, met, note)


def _statements(results: Results) -> Goal:
    f = _fleet(results)
    st = f.get("steady")
    goal = ("Fleet steady state: the runtime's own ≤ 1 DB statement per running task-second "
            "(checkpoints, the actor's pace, apart)")
    if not st:
        return _not_measured(goal, f)
    db = st["db"]
    own = db.get("runtime_per_task_s")
    if own is None:  # results of a run before the split
        own = db["statements_per_task_s"] - db["checkpoint_writes_per_task_s"]
    met = own <= 1
    tasks = sum(st["running"]) / 2
    measured = (f"{own:.2f} per task-second over {st['seconds']:.0f} s with {tasks:.0f} "
                f"running: heartbeats {db.get('heartbeat_statements_per_task_s', 0.0):.2f}, "
                f"the rest {db['other_per_task_s']:.2f}; checkpoints "
                f"{db['checkpoint_writes_per_task_s']:.2f} more (all: "
                f"{db['statements_per_task_s']:.2f})")
    s = f.get("settings") or {}
    interval = min(s.get("heartbeat_interval_s", 2), s.get("cancel_poll_interval_s", 2))
    note = "" if met else (
        f"Each worker writes its pool processes' beats in one statement every "
        f"min(HEARTBEAT_INTERVAL, CANCEL_POLL_INTERVAL) = {interval:g} s; the rest is fixed "
        f"per worker and per reaper (its loops), spread over the running tasks, so it shrinks "
        f"per task as the fleet grows. At 10,000 running tasks the same rates would be "
        f"{st['at_10k']['db_statements_per_s']:,} statements a second, checkpoints included "
        f"(a linear extrapolation).")
    return Goal(goal, measured, met, note)


EVALUATORS = (_observed, _terminal, _deliveries, _statements)


def goals(results: Results) -> list[dict[str, Any]]:
    if "fleet" not in results:
        return []
    return [asdict(fn(results)) for fn in EVALUATORS]
