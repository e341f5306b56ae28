"""The per-task cost section's tables, goals and notes, for the terminal and RESULTS.md."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.figures import Results, number

SHORT = "11. Short tasks: ours vs plain Celery"
SERVERS = "11. One short task, counted by the servers (per task)"
STEPS = "11. One delivery in a pool process (instrumented worker, direct path)"
SUBMIT = "11. Submissions over HTTP (closed loop, a queue no worker reads)"
API = "11. One submission inside the API (instrumented API, direct path; ms)"
MEMORY = "11. Resident memory (MiB): idle / peak under short tasks / peak under submissions"

MODES = ("direct", "kombu")
NO_EVENTS = "direct_no_events"
STEP_LABELS = (
    ("guard", "guard: cancel-channel SUBSCRIBE, cancelled-set ZSCORE"),
    ("claim", "claim: `claim_task`, `saved_chunks`, pending ZREM"),
    ("begin", "begin: `running` event, heartbeat started"),
    ("first_beat_registry", "first heartbeat, beside the task: registry entry"),
    ("first_beat_report", "↳ and its beat handed to the main process"),
    ("user", "the actor's code (its checkpoint crossing included)"),
    ("checkpoint", "↳ checkpoint: `save_result` on the sidecar loop"),
    ("finish", "finish: `Sidecar.end`"),
    ("finish_db", "↳ `finish_task`"),
    ("unsubscribe", "↳ cancel-channel UNSUBSCRIBE"),
    ("registry_remove", "↳ registry entry removed (EVAL)"),
    ("events", "events: `running` + end PUBLISH (in begin and finish)"),
    ("crossings", "thread crossings and the runtime's own Python"),
    ("execute", "the whole delivery (`Runtime.execute`)"),
)


def cost(results: Results) -> dict[str, Any]:
    return results.get("task_cost") or {}


def _ours(results: Results, mode: str) -> dict[str, Any]:
    return (cost(results).get("ours") or {}).get(mode) or {}


def _pp(d: dict[str, Any] | None) -> str:
    return "—" if not d or not d.get("n") else f"{d['p50']:.2f} / {d['p99']:.2f}"


# -- tables --------------------------------------------------------------------------------

def _rounds(r: dict[str, Any]) -> str:
    return " / ".join(number(x["tasks_per_s"], 0) for x in r.get("rounds") or [r])


def short_rows(results: Results) -> list[list[str]]:
    c = cost(results)
    if not c:
        return []
    celery = (c.get("celery") or {}).get("tasks_per_s")
    rows = []
    for mode in (*MODES, NO_EVENTS):
        s = _ours(results, mode).get("short_tasks")
        if not s:
            continue
        ratio = f"{s['tasks_per_s'] / celery:.2f}×" if celery else "—"
        label = ("ours, PUBLISH_MODE=direct, TASK_EVENTS=false" if mode == NO_EVENTS
                 else f"ours, PUBLISH_MODE={mode}")
        rows.append([label, number(s["tasks_per_s"]), ratio, _rounds(s),
                     f"{s['succeeded']}/{s['tasks']}", number(s["submit_s"], 2),
                     number(s["seconds"], 2), number(s["per_task"]["xact_commit"], 2),
                     number(s["per_task"]["redis_commands"])])
    if cel := c.get("celery"):
        rows.append(["plain Celery (no-op, acks_late, Redis backend)", number(cel["tasks_per_s"]),
                     "1.00×", _rounds(cel), f"{cel['succeeded']}/{cel['tasks']}",
                     number(cel["sent_s"], 2), number(cel["seconds"], 2), "—",
                     number(cel["per_task"]["redis_commands"])])
    return rows


def server_rows(results: Results) -> list[list[str]]:
    c = cost(results)
    per = {m: (_ours(results, m).get("short_tasks") or {}).get("per_task") or {}
           for m in (*MODES, NO_EVENTS)}
    per["celery"] = (c.get("celery") or {}).get("per_task") or {}
    if not any(per.values()):
        return []
    cols = (*MODES, NO_EVENTS, "celery")
    rows = [["PostgreSQL transactions", *(number(per[k].get("xact_commit"), 2)
                                          if k != "celery" else "—" for k in cols)]]
    tables = sorted({t for k in (*MODES, NO_EVENTS) for t in per[k].get("rows_written", {})})
    for t in tables:
        cells = []
        for k in (*MODES, NO_EVENTS):
            w = per[k].get("rows_written", {}).get(t)
            cells.append("—" if not w else " / ".join(f"{w[x]:.2f}" for x in ("ins", "upd", "del")))
        rows.append([f"rows of `{t}` inserted / updated / deleted", *cells, "—"])
    rows.append(["Redis commands", *(number(per[k].get("redis_commands")) for k in cols)])
    names = sorted({n for k in cols for n in per[k].get("redis_by_command", {})},
                   key=lambda n: -max(per[k].get("redis_by_command", {}).get(n, 0) for k in cols))
    for name in names:
        rows.append([f"↳ {name.upper()}", *(number(per[k].get("redis_by_command", {}).get(name),
                                                   2) for k in cols)])
    rows.append(["Redis CPU (ms)", *(number(per[k].get("redis_cpu_ms"), 3) for k in cols)])
    return rows


def _per_step(side: dict[str, Any], table: str, step: str) -> str:
    counts = ((side.get(table) or {}).get("by_step") or {}).get(step) or {}
    return ", ".join(f"{v:g} {k}" for k, v in counts.items()) or "—"


def step_rows(results: Results) -> list[list[str]]:
    b = cost(results).get("breakdown") or {}
    alone, load = b.get("alone") or {}, b.get("under_load") or {}
    if not alone and not load:
        return []
    rows = []
    for key, label in STEP_LABELS:
        step = {"guard": "guard", "claim": "claim", "begin": "begin", "checkpoint": "checkpoint",
                "finish": "finish", "first_beat_registry": "heartbeat_life"}.get(key)
        rows.append([label, _pp((alone.get("ms") or {}).get(key)),
                     _pp((load.get("ms") or {}).get(key)),
                     _per_step(alone, "db", step) if step else "",
                     _per_step(alone, "redis", step) if step else ""])
    rows.append(["between deliveries in one pool process (Celery: ack, events, next message)",
                 "—", _pp(load.get("gap_ms")), "", ""])
    rows.append(["per delivery, in all", "", "",
                 number((alone.get("db") or {}).get("total"), 1),
                 number((alone.get("redis") or {}).get("total"), 1)])
    return rows


def submit_rows(results: Results) -> list[list[str]]:
    rows = []
    for mode in MODES:
        for label, r in (_ours(results, mode).get("submit") or {}).items():
            kind = "POST /api/v1/tasks" if label == "single" else \
                f"POST /api/v1/tasks:batch ×{r['batch']:,}"
            rows.append([mode, kind, str(r["clients"]), number(r["requests_per_s"]),
                         number(r["tasks_per_s"], 0), number(r["latency"]["p50"]),
                         number(r["latency"]["p99"]), number(r["per_task"]["xact_commit"], 2),
                         number(r["per_task"]["redis_commands"], 2),
                         ", ".join(f"{k}×{v}" for k, v in r["statuses"].items())])
    return rows


API_LABELS = (
    ("request", "the request, from the outermost middleware in"),
    ("middlewares", "↳ metrics, errors, method check, token check, rate limit"),
    ("handler", "↳ `submit_task`"),
    ("get_actor", "  ↳ `get_actor` (the actor's row; read at most once a second)"),
    ("insert_task", "  ↳ `insert_task`"),
    ("publish", "  ↳ the Celery message (one script call)"),
    ("event", "  ↳ the `task.submitted` event"),
    ("rest", "  ↳ the rest: body, checks, log line, metrics, response"),
)


def api_rows(results: Results) -> list[list[str]]:
    api = (cost(results).get("breakdown") or {}).get("api") or {}
    if not api:
        return []
    phases = ("alone", "short_tasks", "submit_load")

    def mean(phase: str, step: str) -> float | None:
        d = (api.get(phase) or {}).get(step)
        return d["mean"] if d and d.get("n") else None

    def derived(phase: str, step: str) -> float | None:
        """Per request, from the means: a step not taken on every request (the catalogue
        read) counts for its share of them."""
        steps = api.get(phase) or {}
        requests = (steps.get("handler") or {}).get("n") or 0
        if not requests or mean(phase, "request") is None or mean(phase, "handler") is None:
            return None
        if step == "middlewares":
            return mean(phase, "request") - mean(phase, "handler")
        spent = sum((steps.get(k) or {}).get("mean", 0) * (steps.get(k) or {}).get("n", 0)
                    for k in ("get_actor", "insert_task", "publish", "event"))
        return mean(phase, "handler") - spent / requests

    rows = []
    for step, label in API_LABELS:
        cells = []
        for phase in phases:
            if step in ("middlewares", "rest"):
                cells.append(number(derived(phase, step), 2) + " (mean)")
            else:
                d = (api.get(phase) or {}).get(step)
                calls = f" ({d['n']}×)" if step == "get_actor" and d else ""
                cells.append(_pp(d) + calls)
        rows.append([label, *cells])
    return rows


CPU = "11. CPU per task (ms of user + system time), by process"


def _cpu_columns(results: Results) -> list[tuple[str, dict[str, Any]]]:
    cols = []
    for mode in MODES:
        ours = _ours(results, mode)
        cols.append((f"short tasks ({mode})", (ours.get("short_tasks") or {})))
    cols.append(("short tasks (direct, no task events)",
                 _ours(results, NO_EVENTS).get("short_tasks") or {}))
    cols.append(("short tasks (Celery)", cost(results).get("celery") or {}))
    for mode in MODES:
        submit = _ours(results, mode).get("submit") or {}
        cols.append((f"single submit ({mode})", submit.get("single") or {}))
    direct = _ours(results, "direct").get("submit") or {}
    cols.append(("batch ×1,000 (direct)", direct.get("batch_1000") or {}))
    return [(label, (r.get("cpu_ms_per_task") or {})) for label, r in cols]


def cpu_rows(results: Results) -> list[list[str]]:
    cols = _cpu_columns(results)
    if not any(c for _, c in cols):
        return []
    names: list[str] = []
    for _, c in cols:
        names += [n for n in c.get("by_process", {}) if n not in names]
    rows = [[name, *(number(c.get("by_process", {}).get(name), 3) if c else "—"
                     for _, c in cols)] for name in names]
    rows.append(["all of them", *(number(c.get("total"), 3) if c else "—" for _, c in cols)])
    return rows


def memory_rows(results: Results) -> list[list[str]]:
    rows = []
    for mode in MODES:
        rss = _ours(results, mode).get("rss_mib") or {}
        for name in rss.get("idle", {}):
            rows.append([f"{name} ({mode})", number(rss["idle"].get(name)),
                         number(rss.get("short_tasks_peak", {}).get(name)),
                         number(rss.get("submit_peak", {}).get(name))])
    rss = (cost(results).get("celery") or {}).get("rss_mib") or {}
    for name in rss.get("idle", {}):
        rows.append([name, number(rss["idle"].get(name)),
                     number(rss.get("under_load_peak", {}).get(name)), "—"])
    return rows


TABLES: tuple[tuple[str, list[str], Any], ...] = (
    (SHORT, ["run", "tasks/s (median)", "vs Celery", "each round", "ended ok",
             "submitted in (s)", "last ended (s)", "DB xacts/task", "Redis cmds/task"],
     short_rows),
    (SERVERS, ["counter", "ours (direct)", "ours (kombu)", "ours (direct, no task events)",
               "plain Celery"], server_rows),
    (STEPS, ["step", "alone p50 / p99 ms", "under load p50 / p99 ms", "DB statements",
             "Redis commands"], step_rows),
    (SUBMIT, ["publish", "endpoint", "clients", "req/s", "tasks/s", "p50 ms", "p99 ms",
              "DB xacts/task", "Redis cmds/task", "statuses"], submit_rows),
    (API, ["step", "alone p50 / p99", "under short tasks p50 / p99",
           "under submissions p50 / p99"], api_rows),
    (CPU, ["process", "short tasks (direct)", "short tasks (kombu)",
           "short tasks (direct, no task events)", "short tasks (Celery)",
           "single submit (direct)", "single submit (kombu)", "batch ×1,000 (direct)"],
     cpu_rows),
    (MEMORY, ["process", "idle", "short tasks", "submissions"], memory_rows),
)


def goals(results: Results) -> list[dict[str, Any]]:
    from bench.task_cost_goals import evaluate

    return [asdict(g) for g in evaluate(results)]

