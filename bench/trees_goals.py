"""The trees section's goals: reported, never asserted. A missed goal's note says where the
time went, from this run's own figures."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.figures import Results
from bench.goals import Goal
from bench.trees_report import ms, rounds_of, stopped, trees, worst

GOAL_ANSWER_MS = 200.0


# -- goals ---------------------------------------------------------------------------------

def _size(t: dict[str, Any]) -> str:
    return f"Job tree of 1 + {t.get('children', 0):,} with {t.get('running_target', 0)} running"


def _missing(goal: str, t: dict[str, Any]) -> Goal:
    ours = t.get("ours") or {}
    why = ours.get("skipped") or ours.get("error")
    return Goal(goal, "not measured" + (f" ({why})" if why else ""), None)


def _where_answer_goes(t: dict[str, Any]) -> str:
    b = (t.get("ours") or {}).get("breakdown")
    if not b:
        return "No in-process round was run to break the time down."
    a = b["answer"]
    parts = "; ".join(f"{s['step'].lstrip('↳ ')} {s['ms']:,.1f} ms" for s in a["spans"])
    return (f"In the in-process round `Canceller.cancel()` took {a['took_ms']:,.1f} ms: "
            f"{parts}. The subtree statement locks, updates and returns one row per child, "
            f"and the announce adds every never-started child's message id to the cancelled "
            f"set: both grow with the children, not with the running ones.")


def _answer(results: Results) -> Goal:
    t = trees(results)
    goal = f"{_size(t)}: cancel answered < {GOAL_ANSWER_MS:.0f} ms (HTTP)"
    rounds = rounds_of(t)
    if not rounds:
        return _missing(goal, t)
    slowest = max(r["answer_ms"] for r in rounds)
    met = slowest < GOAL_ANSWER_MS
    measured = (f"worst of {len(rounds)}: {slowest:,.1f} ms ("
                + ", ".join(f"{r['answer_ms']:,.1f}" for r in rounds) + ")")
    return Goal(goal, measured, met, "" if met else _where_answer_goes(t))


def _grace(results: Results) -> Goal:
    t = trees(results)
    grace = t.get("cancel_grace_s", 0.0)
    goal = f"{_size(t)}: every running child stopped within CANCEL_GRACE ({grace:g} s)"
    rounds = rounds_of(t)
    if not rounds:
        return _missing(goal, t)
    last = worst(rounds, stopped)
    missing = sum(r["running_ends"]["not_finished"] for r in rounds)
    met = last is not None and last <= grace * 1000 and not missing
    measured = (f"last one stopped {ms(last)} after the call (worst of {len(rounds)}; row "
                f"terminal and `task.finished` logged)"
                + (f"; {missing} with no `task.finished` line" if missing else ""))
    note = "" if met else (
        "Each running child's end is its own work, after its token is set: the chunk in "
        "flight is abandoned, its checkpoint flushed, `finish_task` written through PgBouncer, "
        "its parent looked at, its registry entry removed. With every pool process woken at "
        "once on a machine of few cores, the last ones wait for a core; the per-round columns "
        "above show when the last token was observed and when the last process was free.")
    return Goal(goal, measured, met, note)


def _none_after(results: Results) -> Goal:
    t = trees(results)
    goal = f"{_size(t)}: 0 children started after the answer, none left unfinished"
    rounds = rounds_of(t)
    if not rounds:
        return _missing(goal, t)
    late = sum(r["after"]["started_after_answer"] for r in rounds)
    left = sum(r["after"]["left_non_terminal"] for r in rounds)
    celery = t.get("celery") or {}
    theirs = ", ".join(f"{k} {celery[k]['started_after_revoke']}" for k in ("group", "chord")
                       if k in celery)
    measured = (f"{late} started after the answer, {left} unfinished, over {len(rounds)} "
                f"round(s)" + (f" (Celery, started after the revoke: {theirs})" if theirs else ""))
    met = late == 0 and left == 0
    return Goal(goal, measured, met, "" if met else (
        "A child that started after the answer passed its claim after the subtree commit: "
        "the claim walks to the nearest stopped ancestor, so this points at that walk; an "
        "unfinished child is one the watch left still queued, running or cancelling."))


def goals(results: Results) -> list[dict[str, Any]]:
    if "trees" not in results:
        return []
    return [asdict(fn(results)) for fn in (_answer, _grace, _none_after)]
