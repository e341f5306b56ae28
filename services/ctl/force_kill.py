"""`taskctl force-kill`: the last resort when cancelling was not enough, on this host.

In order: every non-terminal row becomes `cancelled` in one audited transaction;
the cancel event goes out (workers elsewhere stop cooperatively); this host's
worker processes are SIGKILLed, pool processes before their main; the queues and
the unacknowledged messages are purged; records of the killed processes are
removed. Nothing queued before can run afterwards: its row is terminal and its
message is gone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import structlog
from rich.console import Console
from rich.text import Text

from services.ctl import procs, queues, status
from services.ctl.context import CtlContext
from services.ctl.fmt import duration
from shared.states import ACTIVE, CancelReason

log = structlog.get_logger("taskctl.force_kill")

REASON = CancelReason.FORCE_KILL.value


@dataclass
class Plan:
    counts: dict[str, int]
    host: procs.HostWorkers
    queue_names: list[str]
    lengths: queues.QueueLengths

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


@dataclass
class Done:
    cancelled: dict[str, int]
    killed: procs.KillReport
    purged: queues.QueueLengths
    workers_removed: int
    executions_removed: int
    took_s: float


async def make_plan(ctx: CtlContext) -> Plan:
    counts = await ctx.db.counts(history=False)
    host = await procs.find_local(ctx.redis, ctx.keys, ctx.hostname)
    names = await queues.known_queues(ctx.settings, ctx.db, ctx.redis)
    lengths = await queues.lengths(ctx.redis, ctx.keys, names)
    return Plan(counts={s.value: counts.get(s.value, 0) for s in ACTIVE}, host=host,
                queue_names=names, lengths=lengths)


def show_plan(plan: Plan, ctx: CtlContext, console: Console, *, verb: str = "will") -> None:
    c = plan.counts
    by_role: dict[str, int] = {}
    for p in plan.host.processes:
        by_role[p.role] = by_role.get(p.role, 0) + 1
    roles = ", ".join(f"{n} {r}" for r, n in sorted(by_role.items())) or "none"
    pids = " ".join(str(p.pid) for p in plan.host.processes) or "-"
    busy = {q: n for q, n in plan.lengths.ready.items() if n}
    stale = plan.host.stale_nodes()
    remote = [n for n, s in plan.host.states.items() if s == "remote"]
    lines = [
        f"  1. mark {plan.rows} task rows cancelled (queued {c['queued']}, running "
        f"{c['running']}, cancelling {c['cancelling']}), audited as {ctx.actor}",
        f"  2. SIGKILL {len(plan.host.processes)} worker processes of this host ({roles}): "
        f"{pids}",
        f"  3. purge {sum(plan.lengths.ready.values())} queued messages "
        f"{json.dumps(busy) if busy else ''} and {plan.lengths.unacked} unacknowledged ones",
        "  4. drop the records of killed or dead workers on this host"
        + (f" (stale now: {', '.join(stale)})" if stale else ""),
    ]
    if remote:
        lines.append(f"  Workers on other hosts are not signalled ({', '.join(remote)}): they "
                     "get the cancel event; run `taskctl force-kill` there to kill them.")
    console.print(Text.assemble(("force-kill", "bold"), " on host ", (ctx.hostname, "bold"),
                                f", deployment {ctx.settings.key_prefix!r}, {verb}:"))
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def confirmed(console: Console) -> bool:
    try:
        answer = console.input(Text("Proceed? [y/N] "))
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


async def _cancel_rows(ctx: CtlContext) -> dict[str, int]:
    host = await procs.find_local(ctx.redis, ctx.keys, ctx.hostname)
    remote = [n for n, s in host.states.items() if s == "remote"]
    return await ctx.canceller().force_kill_all(
        by=ctx.actor, reason=REASON, scope={"force_kill": True, "host": ctx.hostname},
        remote_nodes=remote)


async def _forget_dead(ctx: CtlContext) -> tuple[int, int]:
    """Removes this host's worker and execution records whose process is gone."""
    host = await procs.find_local(ctx.redis, ctx.keys, ctx.hostname)
    stale_nodes = host.stale_nodes()
    alive = host.pids
    stale_execs = [e.task_id for e in host.executions if e.pid not in alive]
    async with ctx.redis.pipeline(transaction=True) as pipe:
        if stale_nodes:
            pipe.hdel(ctx.keys.workers, *stale_nodes)
        if stale_execs:
            pipe.zrem(ctx.keys.executions, *stale_execs)
            pipe.hdel(ctx.keys.execution_info, *stale_execs)
        await pipe.execute()
    return len(stale_nodes), len(stale_execs)


async def execute(ctx: CtlContext, plan: Plan) -> Done:
    started = time.monotonic()
    cancelled = await _cancel_rows(ctx)
    # Looked up again: the operator may have paused at the prompt while workers changed.
    host = await procs.find_local(ctx.redis, ctx.keys, ctx.hostname)
    killed = procs.kill_local(host)
    names = sorted(set(plan.queue_names)
                   | set(await queues.known_queues(ctx.settings, ctx.db, ctx.redis)))
    purged = await queues.purge(ctx.redis, ctx.keys, names)
    workers_removed, executions_removed = await _forget_dead(ctx)
    done = Done(cancelled=cancelled, killed=killed, purged=purged,
                workers_removed=workers_removed, executions_removed=executions_removed,
                took_s=time.monotonic() - started)
    log.warning("taskctl.force_kill", by=ctx.actor, reason=REASON, host=ctx.hostname,
                cancelled=cancelled, killed=killed.killed, survivors=killed.survivors,
                refused=killed.refused, purged=purged.ready, unacked=purged.unacked,
                took_s=round(done.took_s, 3))
    return done


def show_done(done: Done, console: Console) -> None:
    c = done.cancelled
    k = done.killed
    rows = c["queued"] + c["running"] + c["cancelling"]
    lines = [f"  cancelled {rows} rows (queued {c['queued']}, running "
             f"{c['running']}, cancelling {c['cancelling']})"]
    if c.get("remote"):
        lines.append(f"  of which {c['remote']} run on other hosts: cancelled with force, "
                     "their hosts stop them and record how they ended")
    lines.append(f"  killed {len(k.killed)} processes {' '.join(map(str, k.killed))}")
    if k.already_gone:
        lines.append(f"  already gone: {' '.join(map(str, k.already_gone))}")
    lines.extend(f"  not signalled: {pid} ({why})" for pid, why in k.refused)
    if k.survivors:
        lines.append(f"  STILL RUNNING: {' '.join(map(str, k.survivors))}")
    lines.append(f"  purged {sum(done.purged.ready.values())} queued and "
                 f"{done.purged.unacked} unacknowledged messages")
    lines.append(f"  removed {done.workers_removed} worker and {done.executions_removed} "
                 "execution records")
    console.print(Text.assemble(("done", "bold"), f" in {duration(done.took_s)}:"))
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


async def run(ctx: CtlContext, console: Console, *, force: bool, status_only: bool,
              timeout: float) -> int:
    plan = await make_plan(ctx)
    if status_only:
        await status.run(ctx, console, as_json=False, timeout=timeout)
        console.print()
        show_plan(plan, ctx, console, verb="would (run without --status to do it)")
        return 0
    show_plan(plan, ctx, console)
    if not force and not confirmed(console):
        console.print("aborted: nothing was changed")
        return 1
    done = await execute(ctx, plan)
    show_done(done, console)
    console.print()
    await status.run(ctx, console, as_json=False, timeout=timeout)
    return 1 if done.killed.survivors else 0
