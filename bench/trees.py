"""10. Cancel a job tree: ours beside Celery's, in one run.

Ours (bench/trees_ours.py): a root and N children (10,000; 1,000 with `--quick`) made in one
transaction, as many children running as the fleet has pool processes (100 on three
simulated hosts behind PgBouncer; 30 with `--quick`), the rest queued; then
`POST /api/v1/tasks/{root}/cancel`. Measured: the HTTP answer, until every running child's
row is terminal and its process free (its worker's `task.finished` line), children started
after the answer, children left unfinished, until the queue is empty; and, in a last round
run in-process, where the answer's time goes.

Celery (bench/trees_celery.py), afterwards, on the same number of pool processes: a group
of N members revoked with `GroupResult.revoke(terminate=True, signal='SIGKILL')`, and a
chord whose header is revoked: members started after the revoke, until none runs, until the
queue is empty, and whether the chord's callback fires, fails or hangs.

`python -m bench --only trees` runs it as a suite section.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import trees_celery, trees_ours
from bench.plan import Plan
from bench.stack import Servers


async def run(servers: Servers, out_dir: Path, plan: Plan, *, cancel_grace: float,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    running = sum(plan.trees_concurrency)
    out: dict[str, Any] = {"children": plan.trees_children, "running_target": running,
                           "cancel_grace_s": cancel_grace}
    say(f"ours: 1 root + {plan.trees_children:,} children, {running} running on "
        f"{len(plan.trees_concurrency)} simulated hosts")
    out["ours"] = await trees_ours.run(servers, out_dir / "ours", plan,
                                       cancel_grace=cancel_grace, say=say)
    say(f"Celery: group and chord of {plan.trees_children:,} members on {running} pool "
        f"processes")
    try:
        out["celery"] = await trees_celery.run(
            servers, out_dir / "celery", members=plan.trees_children, concurrency=running,
            say=lambda line: say(f"  {line}"))
    except Exception as exc:
        out["celery"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        say(f"  Celery side failed: {out['celery']['error']}")
    return out
