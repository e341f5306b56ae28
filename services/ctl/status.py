"""`taskctl status`: the snapshot as rich tables, or as JSON for scripts."""

from __future__ import annotations

import json
import time

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from services.ctl import snapshot
from services.ctl.context import CtlContext
from services.ctl.fmt import ago, duration, size
from shared.states import TERMINAL, TaskStatus

_STATE_STYLE = {"alive": "green", "remote": "cyan", "gone": "red", "pid reused": "red"}


def _workers(s: snapshot.Snapshot) -> Table:
    t = Table(title="Workers", title_justify="left", expand=False)
    for col in ("node", "host", "pid", "state", "conc.", "up", "active", "reserved",
                "scheduled"):
        t.add_column(col, justify="right" if col in ("pid", "conc.", "active", "reserved",
                                                      "scheduled") else "left")
    for w in s.workers:
        up = duration(s.at - w["started_at"]) if w["started_at"] else "-"
        held = [str(w[k]) if w[k] is not None else "-" for k in ("active", "reserved",
                                                                  "scheduled")]
        t.add_row(w["node"], w["host"], str(w["pid"]),
                  Text(w["state"], style=_STATE_STYLE.get(w["state"], "")),
                  str(w["concurrency"] or "-"), up, *held)
    if not s.workers:
        t.add_row("(none recorded)", *[""] * 8)
    return t


def _processes(s: snapshot.Snapshot) -> Table:
    t = Table(title=f"Worker processes on {s.host}", title_justify="left")
    for col in ("pid", "ppid", "role", "node", "RSS", "CPU%", "uptime", "state"):
        t.add_column(col, justify="left" if col in ("role", "node", "state") else "right")
    for p in s.processes:
        cpu = f"{p['cpu_percent']:.1f}" if p["cpu_percent"] is not None else "-"
        up = duration(p["uptime_s"]) if p["uptime_s"] is not None else "-"
        t.add_row(str(p["pid"]), str(p["ppid"] or "-"), p["role"], p["node"], size(p["rss"]),
                  cpu, up, p["status"])
    if not s.processes:
        t.add_row("-", "", "(no worker process of this deployment here)", "", "", "", "", "")
    return t


def _tasks(s: snapshot.Snapshot) -> Table:
    t = Table(title="Running tasks (resources at the last heartbeat)", title_justify="left")
    for col in ("task", "actor", "state", "worker", "pid", "RSS", "CPU%", "heartbeat"):
        t.add_column(col, justify="right" if col in ("pid", "RSS", "CPU%", "heartbeat")
                     else "left", no_wrap=col == "task")
    for r in s.tasks:
        cpu = f"{r['cpu_percent']:.1f}" if r["cpu_percent"] is not None else "-"
        beat = ago(r["heartbeat_age_s"]) if r["heartbeat_age_s"] is not None else "none yet"
        t.add_row(r["id"], r["actor"], r["status"], r["worker"] or "-", str(r["pid"] or "-"),
                  size(r["rss_bytes"]), cpu, beat)
    if not s.tasks:
        t.add_row("(nothing running)", *[""] * 7)
    return t


def _queues(s: snapshot.Snapshot) -> Table:
    t = Table(title="Queues (Redis)", title_justify="left")
    t.add_column("queue")
    t.add_column("messages", justify="right")
    for name, n in s.queues.items():
        t.add_row(name, str(n))
    t.add_row(Text("unacked (delivered, not acknowledged)", style="italic"), str(s.unacked))
    return t


def _counts(s: snapshot.Snapshot) -> Table:
    t = Table(title="Tasks (PostgreSQL)", title_justify="left")
    t.add_column("state")
    t.add_column("rows", justify="right")
    for state in TaskStatus:
        n = s.counts.get(state.value, 0)
        style = "" if state in TERMINAL or n == 0 else "bold"
        t.add_row(Text(state.value, style=style), str(n))
    # Waiting parents hold no process, yet their trees are not done: they count.
    t.add_row(Text("active (all but paused and ended)", style="italic"), str(s.active))
    t.add_row(Text("live executions (registry)", style="italic"), str(s.executions["live"]))
    return t


def _reaper(s: snapshot.Snapshot) -> Table:
    r = s.reaper
    t = Table(title="Reaper", title_justify="left")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("leader", r["leader"] or Text("none", style="red"))
    last = ago(r["last_pass_age_s"]) if r["last_pass_age_s"] is not None else "never"
    t.add_row("last reconcile pass", last)
    t.add_row("pass took", f"{r['last_pass_ms']:.1f} ms" if r["last_pass_ms"] is not None
              else "-")
    for rule, n in sorted(s.inconsistencies.items()):
        style = "red" if n < 0 else "yellow" if n else ""
        t.add_row(f"found: {rule}", Text("rule failed" if n < 0 else str(n), style=style))
    return t


def render(s: snapshot.Snapshot) -> RenderableType:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.at))
    parts: list[RenderableType] = [
        Text(f"Taskreaper status: host {s.host}, deployment {s.prefix!r}, {stamp}",
             style="bold"),
        _workers(s), _processes(s), _tasks(s), _queues(s), _counts(s), _reaper(s)]
    parts.extend(Text(note, style="yellow") for note in s.notes)
    return Group(*parts)


async def run(ctx: CtlContext, console: Console, *, as_json: bool, timeout: float) -> int:
    snap = await snapshot.take(ctx, inspect_timeout=timeout)
    if as_json:
        print(json.dumps(snap.to_json(), indent=2))
    else:
        console.print(render(snap))
    return 0
