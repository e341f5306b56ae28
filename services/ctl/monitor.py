"""`taskctl monitor`: a live view of every running task (progress, heartbeat age, ETA).

`taskctl monitor kill <id>` ends one of them: a forced cancel through the same
audited path as the API (the task saves what it finished, or is killed at once).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from services.ctl.context import CtlContext
from services.ctl.fmt import duration, size


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
    status = Text(r["status"], style="yellow" if r["status"] == "cancelling" else "green")
    worker = f"{r['worker'] or '?'} pid {r['pid'] or '?'}"
    cpu = f"{r['cpu_percent']:.0f}%" if r["cpu_percent"] is not None else "-"
    return [str(r["id"]), r["actor"], status,
            ProgressBar(total=float(total) if total else None, completed=float(finished),
                        width=20),
            percent, f"{done}/{failed}/{total if total is not None else '?'}",
            duration(_age(r["started_at"], now)), duration(eta) if eta is not None else "-",
            _heartbeat_cell(beat_age, ctx), size(r["rss_bytes"]), cpu, worker]


async def frame(ctx: CtlContext) -> RenderableType:
    rows = await ctx.db.active_rows()
    counts = await ctx.db.counts(history=False)
    now = time.time()
    table = Table(title="Running tasks", title_justify="left", expand=False)
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("task", "left"), ("actor", "left"), ("state", "left"), ("progress", "left"),
        ("%", "right"), ("done/failed/total", "right"), ("elapsed", "right"), ("ETA", "right"),
        ("heartbeat", "right"), ("RSS", "right"), ("CPU", "right"), ("worker", "left"))
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=col in ("task", "progress"))
    for r in rows:
        table.add_row(*_row(r, ctx, now))
    if not rows:
        table.add_row("(nothing running)", *[""] * 11)
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    summary = Text(f"queued {counts['queued']}  running {counts['running']}  "
                   f"cancelling {counts['cancelling']}  at {stamp}", style="bold")
    hint = Text("Ctrl-C quits; `taskctl monitor kill <task id>` ends a task", style="dim")
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
