"""The per-task cost section's notes: how each table's figures were taken."""

from __future__ import annotations

from typing import Any

from bench.figures import Results
from bench.task_cost_report import API, CPU, MEMORY, SERVERS, SHORT, STEPS, SUBMIT, cost


def _short_note(results: Results) -> str:
    c = cost(results)
    return (
        f"{c.get('tasks', '?')} one-chunk `distill` tasks (`chunk_seconds` 0) submitted through "
        f"`POST /api/v1/tasks` by {c.get('clients', '?')} concurrent clients with the bench "
        "token, after a warm-up; tasks/s is their count over the time from the first "
        "submission to the last `finished_at`. Every contender is up at once and they take "
        f"turns, {c.get('rounds', '?')} rounds each, so that a minute when the machine is busier "
        "lands on all of them alike; the median round is reported, every round's rate beside "
        "it. Our stack is the worker (prefork, 2 pool processes), the reaper and the API, as "
        "`make run` starts them, with task events on (Flower) unless the row says otherwise. "
        "Plain Celery: its `bench.noop` task (`acks_late`, Redis broker and result backend, "
        "prefork with 2 pool processes, no task events) sent with `send_task` from as many "
        "threads, timed to the last result's `date_done`. `DB xacts/task` and `Redis "
        "cmds/task` are the servers' own counts (next table).")


def _servers_note(results: Results) -> str:
    c = cost(results)
    where = ("a Redis server of the section's own" if c.get("redis") == "private"
             else "the shared Redis server (other users' commands included)")
    return (
        f"Per task, less what everything does when idle (measured before the rounds, all "
        f"contenders up): PostgreSQL `pg_stat_database.xact_commit` and `pg_stat_user_tables` "
        f"of each stack's own database over all rounds, read 11 s after the last (PostgreSQL "
        f"reports an idle backend's counts up to 10 s late), less that database's idle rate; "
        f"and `INFO commandstats` of {where} over the contender's own rounds, less the "
        f"server's idle rate. asyncpg runs in autocommit: each statement outside a "
        f"transaction is one transaction, and every statement is sent as prepare + execute, "
        f"two round trips, as the services run without a statement cache. Commands a Lua "
        f"script runs count as well as its EVAL. Our figure covers the API's submission (row "
        f"and message), the worker's main process (Celery's BRPOP, its unacked bookkeeping "
        f"and ack, task events) and pool process, and the reaper's share; the bench's own "
        f"INFO (and MGET of plain Celery's results) are left out.")


def _steps_note(results: Results) -> str:
    return (
        "The worker run by `python -m bench.task_cost_probe`: timers and counters wrapped "
        "around the delivery's steps before the worker starts (bench/task_cost_probe.py). "
        "`alone`: one task at a time, each submitted when the last one ended; `under load`: "
        "the short-task run's load. Each step is what the task's thread (or the sidecar loop, "
        "for the sub-steps) waited for it; `between deliveries` is the time from one "
        "delivery's end to the next one's start in the same pool process while messages "
        "wait, Celery's part of each task (alone, it would be the bench's own pause). The "
        "first heartbeat runs beside the task on the sidecar loop, so it is not part of the "
        "delivery's time unless the loop is busy with it. DB statements and Redis commands are those of the pool process's own "
        "clients, per delivery, by step.")


def _submit_note(results: Results) -> str:
    c = cost(results)
    return (
        f"Closed loop: each client sends its next request when the last one answered; "
        f"{c.get('clients', '?')} clients for single submissions, "
        f"{c.get('batch_clients', '?')} for batches, each load for a few seconds against "
        "the same stack after the short-task run. `direct` writes each message to Redis from "
        "the API's event loop (one Lua script call per thousand messages carries the "
        "pending-id ZADD, each LPUSH and each `task-sent` event: EVALSHA in the counts, and "
        "the commands it runs); `kombu` sends it with Celery's blocking client from a "
        "thread. Per-task counts are the servers', less the idle rate.")


def _api_note(results: Results) -> str:
    return (
        "The API run by `python -m bench.task_cost_api_probe`: timers around the endpoint and "
        "its awaited steps (bench/task_cost_api_probe.py). Each figure is the time the "
        "request waited for the step, the event loop's turn included: under load, every "
        "step also waits for the other requests the loop serves. `alone`: one submission "
        "at a time; then during the short-task run and the single-submission load. The "
        "actor's row is read at most once a second (how many reads in brackets); the two "
        "derived rows are per request, from the means.")


SECTIONS: tuple[tuple[str, Any], ...] = (
    (SHORT, _short_note), (SERVERS, _servers_note), (STEPS, _steps_note),
    (SUBMIT, _submit_note), (API, _api_note),
    (CPU, lambda r: (
        "psutil's user + system CPU time of each process over the load's window, divided by "
        "the tasks it made or ran: every service process, each worker's pool processes "
        "together, the PostgreSQL backends connected to the bench's database (found in "
        "`pg_stat_activity` from another database), the section's redis-server, and the "
        "bench process itself, which drives the load over HTTP. The machine has two cores: "
        "2,000 ms of CPU a second in all, for everything listed and whatever else runs.")),
    (MEMORY, lambda r: "RSS from psutil, every 0.25 s: before any load, and the largest seen "
                       "during each load."),
)


def observations(results: Results) -> list[str]:
    c = cost(results)
    ours = c.get("ours") or {}
    out = []
    direct, kombu = (ours.get("direct") or {}).get("submit") or {}, \
        (ours.get("kombu") or {}).get("submit") or {}
    if direct and kombu:
        parts = [f"{label.replace('_', ' of ')}: {direct[label]['tasks_per_s']:,.0f} vs "
                 f"{kombu[label]['tasks_per_s']:,.0f} tasks/s"
                 for label in direct if label in kombu]
        out.append("The direct publish path against kombu's, same stack and load: "
                   + "; ".join(parts) + ". A batch's messages go out in one script call per "
                   "thousand instead of one blocking send each from a thread.")
    per = ((ours.get("direct") or {}).get("short_tasks") or {}).get("per_task") or {}
    theirs = (c.get("celery") or {}).get("per_task") or {}
    if per and theirs:
        by = per.get("redis_by_command", {})
        out.append(
            f"Of our {per['redis_commands']:.0f} Redis commands a task "
            f"(plain Celery's no-op: {theirs['redis_commands']:.0f}), "
            f"{by.get('publish', 0):.1f} are PUBLISH: Celery's task events for Flower "
            f"(sent, received, started, succeeded) and our own change events (submitted, "
            f"running, ended). The rest is the broker's bookkeeping both have (LPUSH, BRPOP, "
            f"the unacked set and its ack) and ours: the pending-id set, the cancelled-set "
            f"check, the cancel channel's SUBSCRIBE and UNSUBSCRIBE, and the registry entry "
            f"(written twice on the first beat, removed by a script).")
    return out


