"""The run's figures as terminal tables (rich) and as RESULTS.md."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from bench import fleet_report, scale_report, simulated_report, task_cost_report, trees_report
from bench import goals as goal_list
from bench.figures import number
from bench.latencies import collect
from bench.machine import one_line


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    return goal_list.evaluate(results) + scale_report.goals(results)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[met]


# -- the tables, as rows of strings, shared by both renderings ---------------------------------

def latency_rows(results: dict[str, Any]) -> list[list[str]]:
    return [[lat.label, str(lat.dist["n"]), number(lat.dist["p50"]), number(lat.dist["p99"]),
             number(lat.dist["max"])] for lat in collect(results)]


def round_trip_rows(results: dict[str, Any]) -> list[list[str]]:
    trips = results.get("round_trips")
    if not trips:
        return []
    labels = (("postgres_select_1",
               "PostgreSQL `SELECT 1` (asyncpg, no statement cache: 2 round trips)"),
              ("postgres_insert",
               "PostgreSQL one-row INSERT in autocommit (waits for the WAL flush)"),
              ("redis_ping", "Redis `PING`"),
              ("canceller_cancel", "`Canceller.cancel()` in-process: DB write + announce"),
              ("cancel_db_write", "↳ the DB write (all before the announce)"),
              ("cancel_announce", "↳ the announce (Redis: cancelled set + event)"))
    return [[label, str(trips[k]["n"]), number(trips[k]["p50"]), number(trips[k]["p99"]),
             number(trips[k]["max"])] for k, label in labels if k in trips]


def check_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    if tok := results.get("check_token"):
        rows += [["ours: `token.cancelled` (attribute read)", f"{tok['cancelled_attr_ns']:.1f} ns"],
                 ["ours: `token.raise_if_cancelled()`", f"{tok['raise_if_cancelled_ns']:.1f} ns"],
                 ["(timeit's empty loop, included in both)", f"{tok['empty_loop_ns']:.1f} ns"]]
    if ab := results.get("check_is_aborted"):
        rows.append(["Celery `AbortableTask.is_aborted()` (Redis backend)",
                     f"{ab['is_aborted_us']:.1f} µs"])
    if rr := results.get("check_row_read"):
        rows.append(["for scale: one indexed row read by id (PostgreSQL)",
                     f"{rr['row_read_us']:.0f} µs"])
    return rows


def cancel_all_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in results.get("cancel_all") or []:
        ends = r["running"]
        heard = "/".join(str(ends[k].get("observed_via", "?")) for k in ("distill", "stubborn"))
        rows.append([f"{r['queued']:,}", number(r["response_ms"]), number(r["server_took_ms"]),
                     number(r["all_terminal_ms"]), number(ends["distill"]["ms"]),
                     number(ends["stubborn"]["ms"]), heard])
    return rows


def reconcile_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in results.get("reconcile") or []:
        rules = ", ".join(f"{k} {v:.1f}" for k, v in r["rules_median_ms"].items())
        rows.append([f"{r['history_rows']:,}", str(r["active_rows"]), number(r["pass_median_ms"]),
                     number(r["pass_ms"]["p99"]), rules, number(r["registry_read_median_ms"]),
                     number(r["active_by_ids_median_ms"]), number(r["executor_tick_median_ms"]),
                     number(r["status_counts_median_ms"])])
    return rows


def api_rows(results: dict[str, Any]) -> list[list[str]]:
    api = results.get("api")
    if not api:
        return []
    rows = []
    for name, label in (("get_task", "GET /api/v1/tasks/{id}"), ("post_task", "POST /api/v1/tasks")):
        r = api[name]
        rows.append([label, f"{r['rps']:,.0f}", number(r["latency"]["p50"]),
                     number(r["latency"]["p99"]), f"{r['requests']:,}",
                     ", ".join(f"{k}×{v}" for k, v in r["statuses"].items())])
    return rows


def rss_rows(results: dict[str, Any]) -> list[list[str]]:
    rss = (results.get("api") or {}).get("rss_mib")
    if not rss:
        return []
    rows = []
    for name in ("api", "reaper", "worker_main"):
        rows.append([name, number(rss["idle"].get(name)), number(rss["after_load"].get(name))])
    idle_pool, loaded_pool = rss["idle"].get("worker_pool", []), rss["after_load"].get(
        "worker_pool", [])
    rows.append(["worker pool processes (each)", " / ".join(number(v) for v in idle_pool),
                 " / ".join(number(v) for v in loaded_pool)])
    return rows


def goal_rows(results: dict[str, Any]) -> list[list[str]]:
    return [[g["goal"], g["measured"], _verdict(g["met"])] for g in results.get("goals", [])]


TABLES: tuple[tuple[str, list[str], Any], ...] = (
    ("0. Round trips on this machine during the run (ms)", ["call", "n", "p50", "p99", "max"],
     round_trip_rows),
    ("1. Cancel latency (ms)", ["path", "n", "p50", "p99", "max"], latency_rows),
    ("2. Cost of one cancellation check", ["check", "per check"], check_rows),
    ("3. cancel-all with two running tasks (ms)",
     ["queued", "HTTP answer", "server took", "all rows terminal", "distill ended",
      "stubborn ended", "heard via"], cancel_all_rows),
    ("4. Reconcile pass (ms)",
     ["history rows", "active", "pass median", "pass p99", "rules (median)",
      "registry read", "rows by id", "executor tick", "count by status"], reconcile_rows),
    ("5. API under load (ms)", ["endpoint", "req/s", "p50", "p99", "requests", "statuses"],
     api_rows),
    ("5. Resident memory (MiB)", ["process", "idle", "after load"], rss_rows),
    *fleet_report.TABLES,
    *simulated_report.TABLES,
    *trees_report.TABLES,
    *task_cost_report.TABLES,
    *scale_report.TABLES,
    ("Goals", ["goal", "measured", "verdict"], goal_rows),
)


def print_tables(results: dict[str, Any], console: Console) -> None:
    meta = results.get("meta", {})
    if "machine" in meta:
        console.print(f"\n[bold]Machine:[/] {one_line(meta['machine'])}")
    for title, header, fn in TABLES:
        rows = fn(results)
        if not rows:
            continue
        table = Table(title=title, title_justify="left", show_lines=False)
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in rows]
    return "\n".join(lines)
