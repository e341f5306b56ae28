"""The trees section's observations: what the run showed beyond its goals, from its own
figures and the services' logs."""

from __future__ import annotations

from typing import Any

from bench.figures import Results
from bench.trees_figures import ms, rounds_of, trees, worst


def _revoke_handling(rounds: list[dict[str, Any]]) -> str:
    spans = [(h, x) for r in rounds for h, x in (r["after"].get("revoke_handling") or {}).items()]
    if not spans:
        return ""
    took = [x["last_ms"] - x["first_ms"] for _, x in spans]
    first = [x["first_ms"] for _, x in spans]
    return (f"; a worker's main process began {min(first):,.0f} to {max(first):,.0f} ms after "
            f"the call and was busy with it {min(took):,.0f} to {max(took):,.0f} ms (its first "
            f"to last such line, per worker and round)")


def _kills(rounds: list[dict[str, Any]]) -> str | None:
    hit = [(i, r["running_ends"]) for i, r in enumerate(rounds, 1)
           if r["running_ends"].get("guardian_kills")]
    if not hit:
        return None
    kills = sum(e["guardian_kills"] for _, e in hit)
    late = sum(e["guardian_kills_after_finished"] for _, e in hit)
    status: dict[str, int] = {}
    for _, e in hit:
        for k, n in (e.get("guardian_kill_status") or {}).items():
            status[k] = status.get(k, 0) + n
    return (
        f"The workers' guardians SIGKILLed {kills} pool processes that had run a child of the "
        f"tree (round(s) {', '.join(str(i) for i, _ in hit)}), {late} of them after that "
        f"child's own `task.finished` line, with `record_kill` finding "
        + ", ".join(f"{n}× {k}" for k, n in status.items())
        + " (None: the row had already ended). Those rows' deadlines (the subtree statement's "
          "DB time + CANCEL_GRACE) had passed before the cancel event left, so each guardian "
          "armed at once; it then checks Celery's list of active requests in the worker's "
          "main process before the signal, and that process, busy with the reaper's revoke "
          "of the queued children, had not yet taken the finished executions off it. A pool "
          "process that had let go of the task was killed, which invariant 6 rules out: the "
          "guardian would need to hold back when `record_kill` ends nothing.")


def _stuck_executor(rounds: list[dict[str, Any]]) -> str | None:
    silent = [i for i, r in enumerate(rounds, 1)
              if r["queued"] and not (r["after"].get("reaper_revoked") or {}).get("ids", 1)]
    if not silent:
        return None
    return (
        f"The reaper revoked none of the never-started children's messages in round(s) "
        f"{', '.join(map(str, silent))} (their messages were taken and dropped one by one by "
        f"the pool processes instead): its cancel executor had stopped. Each tick revokes, "
        f"then sends one kill broadcast per row past its deadline + KILL_MARGIN, all at once, "
        f"on 4 threads that share the Celery app's connection pool (a limit of 4): a "
        f"broadcast holds one connection while its producer waits for another, so with more "
        f"kills due at once than the pool can serve, every thread waits for ever and the "
        f"tick never returns (8 `CeleryOps.kill` calls at once against idle workers do not "
        f"return; 4 or 5 do). From then on the reaper neither revokes nor escalates.")


def observations(results: Results) -> list[str]:
    t = trees(results)
    out = []
    for name, part in (("ours", t.get("ours") or {}), ("Celery", t.get("celery") or {})):
        if part.get("skipped"):
            out.append(f"The trees section's {name} side was skipped: {part['skipped']}")
        if part.get("error"):
            out.append(f"The trees section's {name} side stopped early: {part['error']}")
    left = ((t.get("ours") or {}).get("cleanup") or {}).get("left_behind")
    if left:
        out.append("The trees section could not remove everything: " + "; ".join(left))
    rounds = rounds_of(t)
    if rounds:
        logged = [r["after"].get("worker_log") or {} for r in rounds]

        def total(key: str) -> int:
            return sum(int(x.get(key, 0)) for x in logged)

        out.append(
            f"How the never-started children's messages left the workers' queue "
            f"({sum(r['queued'] for r in rounds):,} over {len(rounds)} HTTP round(s)): "
            f"{total('discarded_as_revoked'):,} discarded by Celery's consumer because the "
            f"reaper revoked their ids after the cancel, {total('dropped_by_guard'):,} taken by "
            f"a pool process and dropped by our guard before any user code; the queue was empty "
            f"{ms(worst(rounds, lambda r: r['timeline']['queue_empty_ms']))} after the call "
            f"at worst. Each worker's main process handled the reaper's revoke by trying to "
            f"mark every id revoked in a result backend, which the product does not configure, "
            f"and logged a warning for each: {total('revoke_backend_warnings'):,} lines "
            f"(`Failed to mark task … as revoked in backend`) across "
            f"{len((t.get('ours') or {}).get('concurrency') or [])} workers"
            + _revoke_handling(rounds) + ".")
        out += [x for x in (_kills(rounds), _stuck_executor(rounds)) if x]
    return out
