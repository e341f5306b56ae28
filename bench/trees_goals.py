"""The trees section's goals: reported, never asserted. A missed goal's note says where the
time went, from this run's own figures."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.figures import Results, number
from bench.goals import Goal
from bench.trees_figures import ms, rounds_of, stopped, trees, worst

GOAL_ANSWER_MS = 200.0


# -- goals ---------------------------------------------------------------------------------

def _size(t: dict[str, Any]) -> str:
    return f"Job tree of 1 + {t.get('children', 0):,} with {t.get('running_target', 0)} running"


def _missing(goal: str, t: dict[str, Any]) -> Goal:
    ours = t.get("ours") or {}
    why = ours.get("skipped") or ours.get("error")
    return Goal(goal, "not measured" + (f" ({why})" if why else ""), None)


def _statement(t: dict[str, Any]) -> str:
    """What the subtree statement and the ZADD cost on their own (bench/trees_explain.py)."""
    ours = t.get("ours") or {}
    st, zadd = ours.get("statement"), ours.get("zadd")
    text = ""
    if st:
        on, off = st["summary"]["JIT as configured"], st["summary"]["JIT off"]
        text += (
            f" On its own (medians of {st['repeats']}, rolled back) the subtree statement "
            f"took {number(on['client_ms'])} ms, of which PostgreSQL spent "
            f"{number(on['execution_ms'])} ms executing it and {number(on['jit_ms'])} ms of "
            f"that compiling it (JIT): the planner expects {number(on['estimated_rows'], 0)} "
            f"rows from the recursive walk where there are {number(on['rows'], 0)}, so the "
            f"estimated cost ({number(on['estimated_cost'], 0)}) is past "
            f"jit_above_cost ({st['settings'].get('jit_above_cost')}) and the inline and "
            f"optimize thresholds, and every cancel of a big tree pays an LLVM compilation. "
            f"With `SET LOCAL jit = off` the same statement took {number(off['client_ms'])} "
            f"ms ({number(off['execution_ms'])} ms executing), its rows decoded by asyncpg "
            f"making up the difference to the server's time.")
    if zadd:
        text += (f" A ZADD of {zadd['members']:,} ids alone took {number(zadd['median_ms'])} "
                 f"ms on the same Redis; the rest of the announce is redis-py building the "
                 f"pipeline's commands in the API's process.")
    return text


def _where_answer_goes(t: dict[str, Any]) -> str:
    rounds = rounds_of(t)
    per = ", ".join(f"{r['answer_ms']:,.1f}" for r in rounds)
    text = (f"The HTTP rounds answered in {per} ms. The answer writes the root's row and, in "
            "one transaction after the fence lock, the running children's (a walk up from the "
            "tree's live rows: O(running x depth)); the never-started children are written "
            "`cancelled` after the answer by the API's background sweep. A slow round is time "
            "spent outside those statements: waiting for a core or a PgBouncer connection on "
            "this shared 2-core machine.")
    b = (t.get("ours") or {}).get("breakdown")
    if b:
        a = b["answer"]
        parts = "; ".join(f"{s['step'].lstrip('↳ ')} {s['ms']:,.1f} ms" for s in a["spans"])
        text += (f" The in-process round (`Canceller.cancel()` without the API's background "
                 f"work, so it also sweeps the never-started children before returning, as "
                 f"taskctl does) took {a['took_ms']:,.1f} ms: {parts}.")
    return text + _statement(t)


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
    late = sum(r["running_ends"].get("stopped_after_deadline", 0) for r in rounds)
    measured += (f"; {late} of {sum(r['running'] for r in rounds)} after their own row's "
                 f"deadline")
    return Goal(goal, measured, met, "" if met else _grace_note(rounds))


def _grace_note(rounds: list[dict[str, Any]]) -> str:
    per = "; ".join(
        f"round {i}: answered {r['answer_ms']:,.0f}, last token observed "
        f"{number(r['running_ends']['observed_ms'].get('max'), 0)}, last process free "
        f"{number(r['running_ends']['finished_ms'].get('max'), 0)} ms"
        for i, r in enumerate(rounds, 1))
    via: dict[str, int] = {}
    for r in rounds:
        for k, n in r["running_ends"]["via"].items():
            via[k] = via.get(k, 0) + n
    return (
        f"The running children hear of the cancel only once the answer's work is done: the "
        f"subtree transaction commits, then one pipeline sends the ZADD of every never-started "
        f"child's message id and, behind it, the PUBLISH to each running child's channel. So "
        f"the last token is set about when the answer leaves ({per}); "
        f"{via.get('poll', 0)} of {sum(via.values())} tokens were set by the worker's "
        f"heartbeat reading the committed row before the event came. After its token, each "
        f"child's end is its own work: the chunk in flight abandoned, its checkpoint flushed, "
        f"`finish_task` through PgBouncer, its parent looked at, its registry entry removed, "
        f"with every pool process woken at once on two cores that the rest of the machine "
        f"shares.{_killed(rounds)} The grace counts from the subtree statement's DB time "
        f"(`cancel_deadline`), which is within a few milliseconds of the call. What would "
        f"reach it: a shorter answer (the goal above), and the PUBLISHes sent before the ZADD "
        f"(or the ZADD after the answer), so the running children stop while the rest is "
        f"written.")


def _killed(rounds: list[dict[str, Any]]) -> str:
    kills = sum(r["running_ends"].get("guardian_kills", 0) for r in rounds)
    late = sum(r["running_ends"].get("guardian_kills_after_finished", 0) for r in rounds)
    if not kills:
        return ""
    return (f" Where the deadline had passed before the event left, the workers' guardians "
            f"armed at once and SIGKILLed {kills} pool processes, {late} of them after the "
            f"child had ended by itself (see Observations).")


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
