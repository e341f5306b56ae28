"""RESULTS.md: the figures of one run, the goals they meet or miss and why, and how they
were taken."""

from __future__ import annotations

from collections.abc import Callable

from bench import (
    fleet_report,
    report,
    scale_report,
    simulated_report,
    task_cost_notes,
    trees_report,
)
from bench.figures import Results
from bench.machine import one_line

_SECTIONS: tuple[tuple[str, Callable[[Results], str]], ...] = (
    ("0. Round trips on this machine during the run (ms)", lambda r: (
        "The yardstick for the rest. asyncpg runs without a statement cache, as the services "
        "do (PgBouncer-safe), so every parameterised statement costs two round trips "
        "(prepare, then execute). `Canceller.cancel()` is the API's cancel without HTTP, "
        "on rows set to `running` in a database of its own.")),
    ("1. Cancel latency (ms)", lambda r: _latency_notes(r)),
    ("2. Cost of one cancellation check", lambda r: _check_notes(r)),
    ("3. cancel-all with two running tasks (ms)", lambda r: (
        "Each run: N real `queued` rows whose Celery messages wait in a queue no worker reads "
        "(made in bulk with SQL and one Celery producer), plus a running `distill` "
        "(cooperative) and a running `stubborn` (mode sleep) on the worker. Timed from before "
        "`POST /api/v1/tasks/cancel-all`: the HTTP answer (`server took` is the API's own "
        "`took_ms`), the first 5 ms poll that finds no row queued, running or cancelling, and "
        "each running task's `finished_at`. The stubborn task bounds `all rows terminal`: it "
        "ends when its grace period does. `heard via` is how each running task's token was "
        "set (distill/stubborn): `event` is the Redis message, `poll` the fallback DB read.")),
    ("4. Reconcile pass (ms)", lambda r: (
        "`Reconciler.tick()` in-process (a `ReaperContext` as the daemon builds it), median "
        "and p99 of several passes after a warm-up, at each history size (terminal rows over "
        "the last month, `VACUUM ANALYZE` after loading) with 1,000 running tasks that have "
        "fresh heartbeats and live registry entries: healthy, so every rule runs its queries "
        "and repairs nothing. `registry read` and `rows by id` are the undead rule's two reads "
        "on their own; `executor tick` is the cancel executor's pass (every 0.25 s in the "
        "daemon); `count by status` is `Db.counts()`, which `GET /api/v1/system/status` runs.")),
    ("5. API under load (ms)", lambda r: (
        "Closed loop on loopback: each client sends its next request when the previous one "
        "answered. The load generator runs on the same 2 cores as the API, PostgreSQL and "
        "Redis. Submissions go to a queue no worker reads, and are cancelled afterwards.")),
    ("5. Resident memory (MiB)", lambda r: (
        "RSS from psutil before the API load test and right after it; the worker's pool "
        "processes are listed one by one.")),
    *fleet_report.SECTIONS,
    *simulated_report.SECTIONS,
    *trees_report.SECTIONS,
    *task_cost_notes.SECTIONS,
    *scale_report.SECTIONS,
)


def _check_notes(results: Results) -> str:
    text = ("timeit, best of 7 repeats. Ours is an attribute read on an in-memory flag that the "
            "worker's sidecar keeps current. Celery's `is_aborted()` reads the task's state "
            "from the result backend in Redis on every call")
    aborted = results.get("check_is_aborted")
    if aborted:
        share = aborted["is_aborted_us"] / 10_000 * 100
        text += f", so a task that polls it every 10 ms spends {share:.1f}% of its time checking"
    return text + (". A DB round trip like the row read in the last line is what the "
                   "sidecar's fallback poll costs, once per HEARTBEAT_INTERVAL and never in "
                   "task code.")


def _latency_notes(results: Results) -> str:
    lines = [
        "Clock for ours: `time.time()` just before `POST /api/v1/tasks/{id}/cancel` (aiohttp "
        "client against the API process). Token observed: the timestamp of the worker's "
        "`task.cancel_observed` log line, written right after the sidecar set the token. Row "
        "terminal: the row's `finished_at` (PostgreSQL `now()` of the finishing statement, "
        "same host clock); the 2 ms poll row is the bench seeing it. Process gone: psutil, "
        "polled every 1 ms, a zombie counts as gone. Celery: a plain app with its own queue "
        "and key prefix, prefork with 2 pool processes, Redis broker and result backend; "
        "`revoke(terminate=True, signal='SIGKILL')` on a running sleep loop, and an "
        "`AbortableTask` polling `is_aborted()` every 10 ms that records its exit time in "
        "Redis when `abort()` lands.",
    ]
    outcomes = []
    for name, run in (("cooperative", results.get("cooperative")),
                      *((f"stubborn {k}", v) for k, v in
                        (results.get("uncooperative") or {}).items())):
        if run and run.get("outcomes"):
            outcomes.append(f"{name}: " + ", ".join(f"{n}× {o}" for o, n in
                                                    run["outcomes"].items()))
    if outcomes:
        lines.append("How the rows ended (status/outcome): " + "; ".join(outcomes) + ".")
    killers = [f"stubborn {mode}: " + ", ".join(f"{n}× {k}" for k, n in run["killed_by"].items())
               for mode, run in (results.get("uncooperative") or {}).items()
               if run.get("killed_by")]
    if killers:
        lines.append("Who killed the uncooperative tasks (`watchdog`: the pool process's own; "
                     "`guardian`: the worker's main process; `reaper`: through the worker): "
                     + "; ".join(killers) + ".")
    via = (results.get("cooperative") or {}).get("observed_via")
    if via:
        lines.append("How the cooperative tasks' tokens were set: " + ", ".join(
            f"{n}× {k}" for k, n in via.items()) + " (`event`: the Redis message; `poll`: "
            "the fallback DB read).")
    return "\n\n".join(lines)


def _polled(results: Results) -> tuple[int, int]:
    """How many cancels reached their task through the fallback poll, of how many."""
    via: dict[str, int] = dict((results.get("cooperative") or {}).get("observed_via") or {})
    for r in results.get("cancel_all") or []:
        for end in r["running"].values():
            key = str(end.get("observed_via"))
            via[key] = via.get(key, 0) + 1
    return via.get("poll", 0), sum(via.values())


def _observations(results: Results) -> list[str]:
    out = []
    polled, total = _polled(results)
    failed = (results.get("api_log") or {}).get("cancel_event_failed")
    if polled:
        out.append(
            f"{polled} of {total} cooperative and cancel-all cancels reached their task first "
            f"through the fallback poll (every HEARTBEAT_INTERVAL), not the Redis event (`heard "
            f"via` above). That happens when a heartbeat reads the committed `cancelling` row "
            f"before the event arrives (after a cancel-all of 10,000 the event follows a ZADD "
            f"of every message id), or when the event could not be sent, which the API logs as "
            f"`task.cancel_event_failed`"
            + (f": {failed} such lines in this run." if failed is not None else "."))
    listeners = results.get("cancel_listeners") or {}
    later, expected = listeners.get("two_seconds_later"), listeners.get("expected")
    if later is not None and expected is not None and later < expected:
        out.append(
            f"The worker's cancel listeners: the cancel channel had {listeners['at_start']} "
            f"subscribers right after the worker was ready, {later} two seconds later and "
            f"{listeners.get('at_end')} at the end of the run, where {expected} were expected "
            f"(one per pool process, one for the guardian in the worker's main process). A "
            f"listener that goes away leaves its process to the DB poll.")
    recs = results.get("reconcile") or []
    if recs:
        last = recs[-1]
        parser = results.get("meta", {}).get("machine", {}).get("redis_py_parser", "?")
        out.append(
            f"A reconcile pass costs what the live executions cost, not what history does: at "
            f"{last['history_rows']:,} rows the undead rule took "
            f"{last['rules_median_ms'].get('undead', 0):.0f} of the "
            f"{last['pass_median_ms']:.0f} ms, {last['registry_read_median_ms']:.0f} ms of it "
            f"reading the registry entries of {last['active_rows']:,} executions from Redis, "
            f"which redis-py decodes in {parser} here.")
    if len(recs) >= 2:
        first, last = recs[0], recs[-1]
        out.append(
            f"`Db.counts()` (what `GET /api/v1/system/status` and the dashboard read) took "
            f"{first['status_counts_median_ms']:.1f} ms at {first['history_rows']:,} rows and "
            f"{last['status_counts_median_ms']:.1f} ms at {last['history_rows']:,}: the "
            f"counts by state are kept by triggers, not counted.")
    api = results.get("api") or {}
    if api:
        out.append(
            f"`POST /api/v1/tasks` ({api['post_task']['rps']:.0f} req/s) is slower than "
            f"`GET` ({api['get_task']['rps']:.0f} req/s): each submission inserts the row, "
            f"writes the Celery message to Redis (PUBLISH_MODE: `direct` from the event loop, "
            f"or kombu's blocking client in a thread), then publishes an event.")
    return (out + fleet_report.observations(results) + simulated_report.observations(results)
            + trees_report.observations(results) + task_cost_notes.observations(results)
            + scale_report.observations(results))


def _caveats(results: Results) -> list[str]:
    load = results.get("meta", {}).get("load_average") or {}
    return [
        "One run on a 2-core machine. The services, PostgreSQL, Redis, the plain Celery "
        "worker and the bench itself share those two cores, and other engineers run their "
        "test suites on the same machine whenever they like"
        + (f"; the 1-minute load average over this run was {load['mean']:g} on average and "
           f"{load['max']:g} at most (the bench accounts for about one)"
           if load.get("mean") is not None else "")
        + ". Tails (p99, max) move most with that: compare figures within one run, not "
          "across runs.",
        "CANCEL_GRACE is 1 s (default 5 s) so that uncooperative rounds take seconds; the "
        "`gil` rounds are fewer (20: each takes the grace, the kill and a pool refill).",
        "Percentiles are nearest-rank: every reported figure is an observed sample, so the "
        "p99 of 20 samples is their maximum.",
        "Revoke-terminate kills without saving anything and leaves no record of why; "
        "`AbortableTask` needs a result backend and a poll in the task's own loop. Ours "
        "records the cancel, the task's checkpoint and its end in PostgreSQL, and the "
        "latency figures include that work.",
    ]


def markdown(results: Results, plotted: bool) -> str:
    meta = results.get("meta", {})
    s = meta.get("settings") or {}
    parts = ["# Benchmark results", "",
             f"Made by `make bench` (`python -m bench`, plan `{meta.get('plan')}`) on "
             f"{meta.get('started_at')}; the run took {meta.get('took_s', 0) / 60:.1f} minutes. "
             f"Every sample is in `results.json`; how each figure is taken is in "
             f"`README.md` beside this file.", ""]
    if "machine" in meta:
        parts.append(f"- **Machine:** {one_line(meta['machine'])}.")
    parts.append(f"- **Servers:** {meta.get('servers')}.")
    if meta.get("code"):
        parts.append(f"- **Code measured:** commit {meta['code']} of this repository.")
    if s:
        parts.append(f"- **Settings:** CANCEL_GRACE={s['cancel_grace_s']:g} s (short on purpose), "
                     f"KILL_MARGIN={s['kill_margin_s']:g} s, "
                     f"CANCEL_POLL_INTERVAL={s['cancel_poll_interval_s']:g} s, "
                     f"HEARTBEAT_INTERVAL={s['heartbeat_interval_s']:g} s, "
                     f"RECONCILE_INTERVAL={s['reconcile_interval_s']:g} s, "
                     f"WORKER_CONCURRENCY={s['worker_concurrency']}; all else default.")
    parts += ["", "## Goals", "", report.md_table(["goal", "measured", "verdict"],
                                                  report.goal_rows(results))]
    missed = [g for g in results.get("goals", []) if g.get("note")]
    if missed:
        parts += ["", "### Why missed, and what would reach it", ""]
        for g in missed:
            parts += [f"**{g['goal']}.** {g['note']}", ""]
    by_title = {title: (header, fn) for title, header, fn in report.TABLES}
    for title, note in _SECTIONS:
        header, fn = by_title[title]
        rows = fn(results)
        if not rows:
            continue
        parts += ["", f"## {title}", "", report.md_table(header, rows), "", note(results)]
        if title.startswith("1.") and plotted:
            parts += ["", "![Cumulative distributions of the cancel latencies](latency.png)"]
    observations = _observations(results)
    if observations:
        parts += ["", "## Observations", ""] + [f"- {o}" for o in observations]
    parts += ["", "## Caveats", ""] + [f"- {c}" for c in _caveats(results)]
    return "\n".join(parts).rstrip() + "\n"
