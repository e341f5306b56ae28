"""The per-task cost section's notes: how each table's figures were taken."""

from __future__ import annotations

from typing import Any

from bench.figures import Results
from bench.task_cost_report import API, MEMORY, SERVERS, SHORT, STEPS, SUBMIT, cost


def _short_note(results: Results) -> str:
    c = cost(results)
    return (
        f"{c.get('tasks', '?')} one-chunk `distill` tasks (`chunk_seconds` 0) submitted through "
        f"`POST /api/v1/tasks` by {c.get('clients', '?')} concurrent clients with the bench "
        "token, after a warm-up; tasks/s is their count over the time from the first "
        "submission to the last `finished_at`. Our stack is the worker (prefork, 2 pool "
        "processes), the reaper and the API, as `make run` starts them, with task events on "
        "(Flower). Plain Celery: its `bench.noop` task (`acks_late`, Redis broker and result "
        "backend, prefork with 2 pool processes, no task events) sent with `send_task` from as "
        "many threads, timed to the last result's `date_done`. `DB xacts/task` and `Redis "
        "cmds/task` are the servers' own counts over the run, less the idle stack's rate "
        "(next table).")


def _servers_note(results: Results) -> str:
    c = cost(results)
    where = ("a Redis server of the section's own" if c.get("redis") == "private"
             else "the shared Redis server (other users' commands included)")
    return (
        f"Deltas over the short-task run, divided by the tasks, less what the idle stack did in "
        f"as long (measured just before): PostgreSQL `pg_stat_database.xact_commit` and "
        f"`pg_stat_user_tables` of the bench's own database (asyncpg runs in autocommit: each "
        f"statement outside a transaction is one; every statement is sent as prepare + "
        f"execute, two round trips, as the services run without a statement cache), and "
        f"`INFO commandstats` of {where}. Commands a Lua script runs count as well as the "
        f"EVAL. Our figure covers the API's submission (row and message), the worker's main "
        f"process (Celery's BRPOP, its unacked bookkeeping and ack, task events) and pool "
        f"process, and the reaper's share; the bench's own INFO and SUBSCRIBE are left out.")


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
        "two derived rows are differences of medians.")


SECTIONS: tuple[tuple[str, Any], ...] = (
    (SHORT, _short_note), (SERVERS, _servers_note), (STEPS, _steps_note),
    (SUBMIT, _submit_note), (API, _api_note),
    (MEMORY, lambda r: "RSS from psutil, every 0.25 s: before any load, and the largest seen "
                       "during each load."),
)


def observations(results: Results) -> list[str]:
    return []


