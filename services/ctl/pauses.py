"""`taskctl pause ID`, `taskctl pause-all` and `taskctl resume-all`: a maintenance window
is pause-all, the work, resume-all, and nothing is lost or done twice.

The same operations as the API's (shared.pausing), so the audit trail and the events are
identical whoever asked. A paused task's own resume is `taskctl resume ID`.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from services.ctl.commands import emit, resolve, row_json
from services.ctl.context import CtlContext
from shared.pausing import Pauser

COMMANDS = ("pause", "pause-all", "resume-all")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("pause", help="pause one task: it saves its work and waits for a resume")
    p.add_argument("task_id", help="task id (or a unique prefix of a running task's id)")
    p.add_argument("--reason", help="recorded with the pause")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("pause-all", help="pause every queued and running task")
    p.add_argument("--reason", help="recorded with the pause")
    _scope(p)

    p = sub.add_parser("resume-all", help="queue every paused task again")
    _scope(p)


def _scope(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actor", help="only this actor's tasks")
    p.add_argument("--queue", help="only this queue's tasks")
    p.add_argument("--json", action="store_true")


def _pauser(ctx: CtlContext) -> Pauser:
    return Pauser(ctx.settings, ctx.db, ctx.redis, ctx.celery)


async def run(ctx: CtlContext, console: Console, args: argparse.Namespace) -> int:
    match args.command:
        case "pause":
            task_id = await resolve(ctx, args.task_id)
            one = await _pauser(ctx).pause(task_id, by=ctx.actor, reason=args.reason)
            verb = "pause requested" if one.changed else "nothing to do, already"
            emit(console, args.json, {**row_json(one.row), "changed": one.changed},
                 f"{task_id}: {verb} {one.row['status']}")
        case "pause-all":
            out = await _pauser(ctx).pause_all(by=ctx.actor, reason=args.reason,
                                               actor=args.actor, queue=args.queue)
            data = {"paused": out.paused, "pausing": len(out.pausing),
                    "audit_id": out.audit_id, "took_ms": round(out.took_ms, 1)}
            emit(console, args.json, data,
                 f"paused {out.paused} queued, pausing {len(out.pausing)} running in "
                 f"{data['took_ms']} ms (audit #{out.audit_id})")
        case "resume-all":
            back = await _pauser(ctx).resume_all(by=ctx.actor, actor=args.actor,
                                                 queue=args.queue)
            data = {"resumed": back.resumed, "audit_id": back.audit_id,
                    "took_ms": round(back.took_ms, 1)}
            emit(console, args.json, data,
                 f"resumed {back.resumed} paused in {data['took_ms']} ms"
                 f"{f' (audit #{back.audit_id})' if back.audit_id else ''}")
    return 0
