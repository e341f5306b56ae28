"""`taskctl monitor`: a live view of every running task (progress, heartbeat age, ETA).

A root of a job tree also shows its children and its whole tree's progress, and roots
waiting for their children (holding no process) are listed too: most of a tree's life is
spent there. That costs one statement per frame, whatever the trees' sizes (each is read
through its root's index).

`taskctl monitor kill <id>` ends one of them: a forced cancel through the same
audited path as the API (the task saves what it finished, or is killed at once); for a
root it ends the whole tree.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from services.ctl.context import CtlContext
from services.ctl.fmt import duration, size, state
from shared.tree_view import RootTree, TreeReader

# Roots waiting for their children shown below the running tasks, oldest first.
WAITING_ROOTS = 20


def _age(ts: datetime | None, now: float) -> float | None:
    return None if ts is None else max(0.0, now - ts.timestamp())


def _heartbeat_cell(age: float | None, ctx: CtlContext) -> Text:
    if age is None:
        return Text("none yet", style="yellow")
    if age > ctx.settings.heartbeat_timeout:
        style = "bold red"
    elif age > 3 * ctx.settings.heartbeat_interval:
        style = "yellow"
    else:
        style = "green"
    return Text(f"{duration(age)} ago", style=style)


def _row(r: Any, ctx: CtlContext, now: float) -> list[RenderableType]:
    done, failed, total = r["done"], r["failed"], r["total"]
    finished = done + failed
    percent = f"{100.0 * finished / total:5.1f}%" if total else "    ?"
    beat_age = _age(r["heartbeat_at"], now)
    eta = r["eta_seconds"]
    if eta is not None and beat_age is not None:
        eta = max(0.0, eta - beat_age)  # the estimate was made at the last heartbeat
    waiting = r["status"] == "waiting"
    beat = Text("-", style="dim") if waiting else _heartbeat_cell(beat_age, ctx)
    worker = "-" if waiting else f"{r['worker'] or '?'} pid {r['pid'] or '?'}"
    cpu = f"{r['cpu_percent']:.0f}%" if r["cpu_percent"] is not None else "-"
    return [str(r["id"]), r["actor"], state(r["status"]),
            ProgressBar(total=float(total) if total else None, completed=float(finished),
                        width=20),
            percent, f"{done}/{failed}/{total if total is not None else '?'}",
            duration(_age(r["started_at"], now)), duration(eta) if eta is not None else "-",
            beat, size(r["rss_bytes"]), cpu, worker]


def _tree_cell(root: RootTree | None) -> Text:
    if root is None:
        return Text("")
    t = root.totals
    percent = f"{t['percent']:.1f}%" if t["percent"] is not None else "?%"
    kids = f"{root.children} child{'ren' if root.children != 1 else ''}"
    return Text(f"{kids} {percent}", style="bold" if t["active"] else "dim")


def _waiting_row(root: RootTree) -> dict[str, Any]:
    """A waiting root as a row of the table: its own progress, its tree's ETA, no process."""
    return {"id": root.id, "actor": root.actor, "status": root.status, "done": root.done,
            "failed": root.failed, "total": root.total, "heartbeat_at": None,
            "eta_seconds": root.totals["eta_seconds"], "started_at": root.started_at,
            "worker": None, "pid": None, "rss_bytes": None, "cpu_percent": None}


async def frame(ctx: CtlContext) -> RenderableType:
    rows: list[Any] = list(await ctx.db.active_rows())
    counts = await ctx.db.counts(history=False)
    roots = {r.id: r for r in await TreeReader(ctx.db).roots(
        [r["id"] for r in rows], waiting=WAITING_ROOTS, now=datetime.now(UTC))}
    shown = {r["id"] for r in rows}
    rows.extend(_waiting_row(r) for r in roots.values() if r.id not in shown)
    now = time.time()
    title = "Running tasks" + (" and roots waiting for their children"
                               if len(rows) > len(shown) else "")
    table = Table(title=title, title_justify="left", expand=False)
    columns: list[tuple[str, Literal["left", "right"]]] = [
        ("task", "left"), ("actor", "left"), ("state", "left"), ("progress", "left"),
        ("%", "right"), ("done/failed/total", "right"), ("elapsed", "right"), ("ETA", "right"),
        ("heartbeat", "right"), ("RSS", "right"), ("CPU", "right"), ("worker", "left")]
    if roots:  # a column only when there is a tree to show
        columns.insert(3, ("tree", "right"))
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=col in ("task", "progress", "tree"))
    for r in rows:
        cells = _row(r, ctx, now)
        if roots:
            cells.insert(3, _tree_cell(roots.get(r["id"])))
        table.add_row(*cells)
    if not rows:
        table.add_row("(nothing running)", *[""] * (len(columns) - 1))
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    summary = Text(f"queued {counts['queued']}  running {counts['running']}  "
                   f"cancelling {counts['cancelling']}  pausing {counts['pausing']}  "
                   f"waiting {counts['waiting']}  at {stamp}", style="bold")
    hint = Text("Ctrl-C quits; `taskctl monitor kill <task id>` ends a task (a root: its tree)",
                style="dim")
    return Group(summary, table, hint)


async def run(ctx: CtlContext, console: Console, *, once: bool, interval: float) -> int:
    if once:
        console.print(await frame(ctx))
        return 0
    if not console.is_terminal:  # piped or logged: one frame after another, no redrawing
        while True:
            console.print(await frame(ctx))
            await asyncio.sleep(interval)
    with Live(await frame(ctx), console=console, auto_refresh=False,
              vertical_overflow="visible") as live:
        while True:
            await asyncio.sleep(interval)
            live.update(await frame(ctx), refresh=True)
