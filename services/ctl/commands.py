"""taskctl's one-shot commands: cancel, cancel-all, resume, submit (pauses.py: the pauses).

All of them go through the same code as the API (shared.cancellation, shared.submit),
so the audit trail, the cancel ladder and the events are identical whoever asked. What
those refuse (shared.errors) becomes a message and an exit code in main.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from rich.console import Console

from services.ctl.context import CtlContext, parse_task_id
from services.ctl.errors import bad_input
from shared.db import Record
from shared.submit import submit


def row_json(row: Record) -> dict[str, Any]:
    keep = ("id", "actor", "queue", "status", "attempt", "outcome", "cancel_reason",
            "cancel_by", "cancel_forced", "pause_reason", "pause_by")
    return {k: (str(row[k]) if isinstance(row[k], uuid.UUID) else row[k])
            for k in keep if k in row.keys()}


def emit(console: Console, as_json: bool, data: dict[str, Any], line: str) -> None:
    if as_json:
        print(json.dumps(data, default=str))
    else:
        console.print(line)


async def resolve(ctx: CtlContext, ident: str) -> uuid.UUID:
    """A full task id, or a unique prefix of a running or cancelling task's id."""
    try:
        return uuid.UUID(ident)
    except ValueError:
        pass
    prefix = ident.strip().lower()
    if len(prefix) < 4 or not set(prefix) <= set("0123456789abcdef-"):
        raise bad_input(f"{ident!r} is not a task id (give the id, or at least 4 of its "
                        "first characters for a running task)")
    matches = [r["id"] for r in await ctx.db.active_rows() if str(r["id"]).startswith(prefix)]
    if not matches:
        raise bad_input(f"no running task id starts with {ident!r}")
    if len(matches) > 1:
        raise bad_input(f"{ident!r} matches {len(matches)} running tasks; give more of the id")
    return matches[0]


async def cancel(ctx: CtlContext, console: Console, ident: str, *, force: bool,
                 reason: str | None, as_json: bool = False) -> int:
    task_id = await resolve(ctx, ident)
    result = await ctx.canceller().cancel(task_id, by=ctx.actor, reason=reason, force=force)
    row = result.row
    verb = "cancel requested" if result.changed else "nothing to do, already"
    data = {**row_json(row), "changed": result.changed}
    if result.subtree is not None:
        data["descendants"] = {"total": sum(result.subtree.values()), **result.subtree}
    emit(console, as_json, data,
         f"{task_id}: {verb} {row['status']}"
         f"{' (forced)' if force and result.changed else ''}{descendants(result.subtree)}")
    return 0


def descendants(subtree: dict[str, int] | None) -> str:
    """What a cancel of a parent did below it, as the tail of its line."""
    if subtree is None:
        return ""
    n = sum(subtree.values())
    if not n:
        return "; no unfinished descendant left to cancel"
    states = ", ".join(f"{v} {k}" for k, v in sorted(subtree.items()))
    return f"; {n} unfinished descendant{'s' if n != 1 else ''} too: {states}"


async def cancel_all(ctx: CtlContext, console: Console, *, force: bool, reason: str | None,
                     actor: str | None, queue: str | None, as_json: bool = False) -> int:
    result = await ctx.canceller().cancel_all(by=ctx.actor, reason=reason, force=force,
                                              actor=actor, queue=queue)
    data = {"cancelled": result.cancelled, "cancelling": len(result.cancelling),
            "hastened": len(result.hastened), "audit_id": result.audit_id,
            "took_ms": round(result.took_ms, 1)}
    emit(console, as_json, data,
          f"cancelled {data['cancelled']} queued, cancelling {data['cancelling']} running"
          f"{', hastened ' + str(data['hastened']) if data['hastened'] else ''} "
          f"in {data['took_ms']} ms (audit #{result.audit_id})")
    return 0


async def resume(ctx: CtlContext, console: Console, ident: str, *, as_json: bool = False
                 ) -> int:
    task_id = parse_task_id(ident)
    row = await ctx.canceller().resume(task_id, by=ctx.actor)
    emit(console, as_json, row_json(row), f"{task_id}: resumed, {row['status']} again")
    return 0


def parse_kwargs(pairs: list[str]) -> dict[str, Any]:
    """key=value pairs; a value is JSON when it parses as JSON, else a plain string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise bad_input(f"{pair!r}: arguments are key=value")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


async def submit_task(ctx: CtlContext, console: Console, actor: str, pairs: list[str], *,
                      queue: str | None, countdown: float | None, as_json: bool = False
                      ) -> int:
    kwargs = parse_kwargs(pairs)
    if countdown is not None and countdown < 0:
        raise bad_input("--countdown must not be negative")
    row = await submit(ctx.db, ctx.celery, actor=actor, kwargs=kwargs, queue=queue,
                       countdown=countdown)
    emit(console, as_json, row_json(row), str(row["id"]))
    return 0
