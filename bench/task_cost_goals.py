"""The per-task cost section's goals, each with what this run's breakdown says about a miss."""

from __future__ import annotations

from typing import Any

from bench.figures import Results
from bench.goals import Goal
from bench.task_cost_report import cost

SHORT_RATIO = 0.8
SINGLE_RPS = 1000
BATCH_TPS = 2000


def _step(results: Results, key: str, side: str = "alone") -> float | None:
    ms = (((cost(results).get("breakdown") or {}).get(side) or {}).get("ms") or {}).get(key)
    return ms.get("p50") if ms and ms.get("n") else None


def _short_note(results: Results, ours: dict[str, Any], celery: dict[str, Any]) -> str:
    breakdown = cost(results).get("breakdown") or {}
    b = breakdown.get("alone") or {}
    execute = _step(results, "execute")
    gap = ((breakdown.get("under_load") or {}).get("gap_ms") or {}).get("p50")
    pools = ours.get("worker_concurrency", 2)
    text = ""
    if execute is not None and gap is not None:
        ceiling = pools * 1000 / (execute + gap)
        text += (
            f"One delivery takes {execute:.1f} ms in a pool process at the median when it is "
            f"alone, and Celery's part between two deliveries {gap:.1f} ms under load: {pools} "
            f"pool processes cannot finish more than {ceiling:.0f} tasks/s before the API, the "
            f"reaper and both servers take their share of the same cores. Of the delivery: "
            f"the claim {_step(results, 'claim'):.1f} ms, the checkpoint "
            f"{_step(results, 'checkpoint'):.1f} ms, the finish {_step(results, 'finish'):.1f} ms "
            f"(`finish_task` {_step(results, 'finish_db'):.1f}), the thread crossings "
            f"{_step(results, 'crossings'):.1f} ms; its "
            f"{(b.get('db') or {}).get('total', 0):g} statements are "
            f"{2 * (b.get('db') or {}).get('total', 0):g} round trips without a statement "
            f"cache, and it sends {(b.get('redis') or {}).get('total', 0):g} Redis commands. ")
    mine, theirs_cpu = ours.get("cpu_ms_per_task") or {}, celery.get("cpu_ms_per_task") or {}
    if mine.get("total") and theirs_cpu.get("total"):
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(mine["by_process"].items())[:5])
        text += (
            f"In CPU, one task cost {mine['total']:.1f} ms over every process ({top}), "
            f"plain Celery's no-op {theirs_cpu['total']:.1f} ms: two cores give 2,000 ms a "
            f"second, so at most {2000 / mine['total']:.0f} of ours a second against "
            f"{2000 / theirs_cpu['total']:.0f} of Celery's, whatever the latencies. ")
    per, theirs = ours.get("per_task") or {}, celery.get("per_task") or {}
    if per and theirs:
        written = "; ".join(
            f"`{t}` " + ", ".join(f"{v:.0f} {k}" for k, v in w.items() if v >= 0.5)
            for t, w in per.get("rows_written", {}).items() if any(v >= 0.5 for v in w.values()))
        text += (f"Counted by the servers, a task costs us {per['xact_commit']:.1f} PostgreSQL "
                 f"transactions writing rows of {written} (the counts by state are kept by "
                 f"statement triggers that append deltas, folded later by the reaper), and "
                 f"{per['redis_commands']:.0f} Redis commands; plain Celery's no-op "
                 f"{theirs['redis_commands']:.0f} commands and no database. ")
    quiet = ((cost(results).get("ours") or {}).get("direct_no_events") or {}).get(
        "short_tasks") or {}
    main_cpu = (mine.get("by_process") or {}).get("worker")
    quiet_cpu = ((quiet.get("cpu_ms_per_task") or {}).get("by_process") or {}).get("worker")
    if quiet and main_cpu is not None and quiet_cpu is not None:
        text += (f"Celery's task events (Flower) are not what holds it back: without them "
                 f"{quiet['tasks_per_s']:.0f} tasks/s, the worker's main process at "
                 f"{quiet_cpu:.2f} ms of CPU a task instead of {main_cpu:.2f}. ")
    return text + (
        "Done already: the claim reads the saved chunks in its own statement, and a new "
        "execution's first beat writes its registry entry at once. What would go further: "
        "the last chunk's checkpoint written by `finish_task` in the same statement when the "
        "code returned right after it, the end's UNSUBSCRIBE, EVAL and PUBLISH pipelined, "
        "and prepared statements kept (asyncpg's statement cache; PgBouncer 1.21+ keeps them "
        "in transaction mode with `max_prepared_statements`), which halves every "
        "statement's round trips." + _budget(mine, celery))


def _budget(mine: dict[str, Any], celery: dict[str, Any]) -> str:
    if not mine.get("total") or not celery.get("tasks_per_s"):
        return ""
    target = SHORT_RATIO * celery["tasks_per_s"]
    return (f" Those take one more statement and about three commands off a delivery, and "
            f"halve the round trips of the rest. The goal here is {target:.0f} tasks/s, which two cores allow "
            f"only if a task costs under {2000 / target:.1f} ms of CPU in all processes "
            f"together, against {mine['total']:.1f} ms now: the database's share (five "
            f"transactions and their triggers) and the pool process's Python would have to "
            f"shrink as well, or the worker run on cores of its own.")


def _short(results: Results) -> Goal:
    goal = f"Short tasks: ours ≥ {SHORT_RATIO}× plain Celery's tasks/s, same run"
    c = cost(results)
    ours = ((c.get("ours") or {}).get("direct") or {})
    short, celery = ours.get("short_tasks"), c.get("celery")
    if not short or not celery:
        return Goal(goal, "not measured", None)
    ratio = short["tasks_per_s"] / celery["tasks_per_s"]
    met = ratio >= SHORT_RATIO
    kombu = ((c.get("ours") or {}).get("kombu") or {}).get("short_tasks") or {}
    measured = (f"{short['tasks_per_s']:.0f} vs {celery['tasks_per_s']:.0f} tasks/s "
                f"({ratio:.2f}×)" + (f"; with PUBLISH_MODE=kombu {kombu['tasks_per_s']:.0f}"
                                     if kombu else ""))
    note = "" if met else _short_note(results, {**short, "worker_concurrency":
                                                ours.get("worker_concurrency", 2)}, celery)
    return Goal(goal, measured, met, note)


def _submit_note(results: Results) -> str:
    c = cost(results)
    direct = ((c.get("ours") or {}).get("direct") or {}).get("submit") or {}
    single = direct.get("single") or {}
    per = single.get("per_task") or {}
    api_cpu = ((single.get("cpu_ms_per_task") or {}).get("by_process") or {}).get("api")
    cpu = (f"The API process spent {api_cpu:.2f} ms of CPU on each submission: one process "
           f"cannot answer more than {1000 / api_cpu:.0f} a second. " if api_cpu else "")
    return cpu + (
        f"Each submission is the API's work alone on one core it shares with PostgreSQL, "
        f"Redis and the load generator: HTTP, the token check, the insert (`insert_task`, "
        f"two round trips without a statement cache; the actor's catalogue row is read at "
        f"most once a second), {per.get('xact_commit', 0):.1f} transactions a submission; "
        f"the message and its `task-sent` event in one Redis script call; then the "
        f"`task.submitted` event, another round trip, and a log line (the instrumented "
        f"API's table says how long each took). What would reach it: a second API process "
        f"(one asyncio process uses one core at most) on a machine with the cores for it, "
        f"prepared statements kept (asyncpg's statement cache; PgBouncer 1.21+ keeps them in "
        f"transaction mode with `max_prepared_statements`), and the `task.submitted` event "
        f"sent in the message's script call (services/api/tasks.py).")


def _single(results: Results) -> Goal:
    goal = f"Single submissions ≥ {SINGLE_RPS:,} req/s (POST /api/v1/tasks)"
    direct = ((cost(results).get("ours") or {}).get("direct") or {}).get("submit") or {}
    r = direct.get("single")
    if not r:
        return Goal(goal, "not measured", None)
    kombu = (((cost(results).get("ours") or {}).get("kombu") or {}).get("submit") or {}).get(
        "single") or {}
    met = r["requests_per_s"] >= SINGLE_RPS
    measured = (f"{r['requests_per_s']:.0f} req/s, p50 {r['latency']['p50']:.1f} ms "
                f"({r['clients']} clients)" + (f"; PUBLISH_MODE=kombu "
                                               f"{kombu['requests_per_s']:.0f} req/s, p50 "
                                               f"{kombu['latency']['p50']:.1f} ms"
                                               if kombu else ""))
    return Goal(goal, measured, met, "" if met else _submit_note(results))


def _batch(results: Results) -> Goal:
    goal = f"Batch submissions ≥ {BATCH_TPS:,} tasks/s (POST /api/v1/tasks:batch)"
    direct = ((cost(results).get("ours") or {}).get("direct") or {}).get("submit") or {}
    batches = {k: v for k, v in direct.items() if k.startswith("batch_")}
    if not batches:
        return Goal(goal, "not measured", None)
    best = max(v["tasks_per_s"] for v in batches.values())
    met = best >= BATCH_TPS
    measured = ", ".join(f"{v['batch']:,} a request: {v['tasks_per_s']:.0f} tasks/s"
                         for v in batches.values())
    note = "" if met else (
        "A batch is one transaction (an INSERT per parent group, the tally triggers per row) "
        "and one Redis transaction per thousand messages; the rest is the API's Python per "
        "task: the JSON in, each item's checks and kwargs validation, each message built, "
        "and the JSON out. A second API process, or the batch's rows written by COPY, would "
        "raise it.")
    return Goal(goal, measured, met, note)


def evaluate(results: Results) -> list[Goal]:
    if not cost(results):
        return []
    return [_short(results), _single(results), _batch(results)]
