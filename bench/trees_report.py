"""The trees section's tables, goals and notes, for the terminal and RESULTS.md."""

from __future__ import annotations

from typing import Any

from bench.figures import Results, number
from bench.trees_figures import ms, rounds_of, stopped, trees
from bench.trees_observations import observations

__all__ = ["SECTIONS", "TABLES", "observations"]

SIDE = "10. Job tree: cancel the root, ours beside Celery's"
ROUNDS = "10. Job tree: our rounds (ms from the call)"
SPANS = "10. Job tree: where our answer's time goes (in-process round)"
ALONE = "10. Job tree: the subtree statement and the ZADD on their own"


# -- tables --------------------------------------------------------------------------------

def side_rows(results: Results) -> list[list[str]]:
    t = trees(results)
    if not t:
        return []
    ours, celery = t.get("ours") or {}, t.get("celery") or {}
    rounds = rounds_of(t)
    g, c = celery.get("group") or {}, celery.get("chord") or {}
    why = ours.get("skipped") or ours.get("error")

    def o(fn: Any) -> str:
        if not rounds:
            return f"not measured ({why})" if why else "not measured"
        return " / ".join(fn(r) for r in rounds)

    def cel(fn: Any, case: dict[str, Any]) -> str:
        return fn(case) if case else celery.get("error", "not measured")

    def row(label: str, mine: Any, theirs: Any) -> list[str]:
        return [label, o(mine), cel(theirs, g), cel(theirs, c)]

    return [
        ["tree", f"1 root + {t['children']:,} children; {t['running_target']} pool processes "
                 f"on {len(ours.get('concurrency') or [])} simulated hosts",
         f"group of {celery.get('members', t['children']):,} members, "
         f"{celery.get('concurrency', '?')} pool processes",
         f"chord, header of {celery.get('members', t['children']):,}, same worker"],
        row("make the tree (one call)", lambda r: ms(r["submit_ms"]),
            lambda d: ms(d["enqueue_ms"])),
        row("running at the cancel", lambda r: str(r["running"]),
            lambda d: str(d["started_before_revoke"])),
        row("cancel call answered", lambda r: f"{r['answer_ms']:,.1f} ms",
            lambda d: f"{d['revoke_call_ms']:,.1f} ms (a broadcast sent, nothing waited for)"),
        row("started after the answer", lambda r: str(r["after"]["started_after_answer"]),
            lambda d: str(d["started_after_revoke"])),
        row("→ every running one stopped", lambda r: ms(stopped(r)),
            lambda d: ms(d["no_member_running_ms"])),
        row("→ every child's state recorded", lambda r: ms(
                r["timeline"]["all_children_terminal_ms"]),
            lambda d: "not recorded by the revoke; result backend at the end: " + ", ".join(
                f"{k} {v:,}" for k, v in sorted(d["backend_states"].items()))),
        row("→ queue empty", lambda r: ms(r["timeline"]["queue_empty_ms"]),
            lambda d: ms(d["queue_empty_ms"])),
        row("ran to completion anyway", lambda r: str(sum(
                e["n"] for e in r["after"]["ends"] if e["status"] == "succeeded")),
            lambda d: str(d["ran_to_completion"])),
        row("left unfinished", lambda r: str(r["after"]["left_non_terminal"]),
            lambda d: str(d["unacked_left"]) + " unacknowledged"),
        row("work of the running ones", lambda r: (
                f"{r['running_ends']['chunks_saved']:,} of "
                f"{r['running_ends']['chunks_done']:,} chunks saved"),
            lambda d: f"lost: {d['killed']} killed mid-task"),
        row("the tree's own end", lambda r: f"root {r['after']['root']['status']}",
            lambda d: (f"callback {d['callback']} after {ms(d['callback_ms'])}"
                       if "callback" in d else "—")),
        row("what remembers the cancel", lambda r: (
                "one audit row ({cancelled:,} cancelled, {cancelling} cancelling); "
                "every row".format(**r["after"]["audit"]) if r["after"]["audit"] else "rows"),
            lambda d: f"{number(d['revoked_ids_held'], 0)} revoked ids in the worker's memory"),
    ]


def round_rows(results: Results) -> list[list[str]]:
    t = trees(results)
    ours = t.get("ours") or {}
    rounds = [*(("HTTP", r) for r in rounds_of(t))]
    if ours.get("breakdown"):
        rounds.append(("in-process", ours["breakdown"]))
    out = []
    for i, (how, r) in enumerate(rounds, 1):
        e, tl, a = r["running_ends"], r["timeline"], r["after"]
        out.append([
            f"{i} ({how})", f"{r['running']} / {r['queued']:,}", number(r["answer_ms"]),
            number(e["observed_ms"].get("max")), number(e["row_terminal_ms"].get("max")),
            number(e["finished_ms"].get("max"))
            + (f" ({e['stopped_after_deadline']} past deadline)"
               if e.get("stopped_after_deadline") else ""),
            number(tl["all_children_terminal_ms"]),
            number(tl["no_live_execution_ms"]), number(tl["queue_empty_ms"]),
            f"{a['started_after_answer']} / {a['left_non_terminal']}",
            f"{e.get('guardian_kills', 0)} ({e.get('guardian_kills_after_finished', 0)})",
            ", ".join(f"{n}× {k}" for k, n in e["via"].items())])
    return out


def span_rows(results: Results) -> list[list[str]]:
    b = (trees(results).get("ours") or {}).get("breakdown")
    if not b:
        return []
    a = b["answer"]
    rows = [[s["step"], number(s["at_ms"]), number(s["ms"])] for s in a["spans"]]
    rows.append(["Python between the steps", "", number(a["between_steps_ms"])])
    rows.append(["`Canceller.cancel()` in all", "0.0", number(a["took_ms"])])
    return rows


def alone_rows(results: Results) -> list[list[str]]:
    ours = trees(results).get("ours") or {}
    st, zadd = ours.get("statement"), ours.get("zadd")
    rows = []
    if st:
        for mode, v in st["summary"].items():
            rows.append([f"`tree_subtree_cancel` over {st['children']:,} children, {mode}",
                         number(v["client_ms"]), number(v["execution_ms"]),
                         number(v["jit_ms"]), number(v["planning_ms"]),
                         number(v["triggers_ms"]),
                         f"{number(v['estimated_rows'], 0)} (returned {number(v['rows'], 0)})",
                         number(v["estimated_cost"], 0)])
    if zadd:
        rows.append([f"ZADD of {zadd['members']:,} message ids (one command)",
                     number(zadd["median_ms"]), "", "", "", "", "", ""])
    return rows


TABLES: tuple[tuple[str, list[str], Any], ...] = (
    (SIDE, ["", "ours: POST /api/v1/tasks/{root}/cancel (each round)",
            "Celery group: revoke(terminate, SIGKILL)",
            "Celery chord header: revoke(terminate)"], side_rows),
    (ROUNDS, ["round", "running / queued", "answered", "last token observed",
              "last running row terminal", "last process free", "every child terminal",
              "no execution registered", "queue empty", "started after answer / unfinished",
              "guardian kills (after the child's own end)", "heard via"], round_rows),
    (SPANS, ["step", "began at (ms)", "took (ms)"], span_rows),
    (ALONE, ["what", "client (ms)", "server execution", "of it JIT compilation", "planning",
             "triggers", "rows estimated", "estimated cost"], alone_rows),
)


# -- notes ---------------------------------------------------------------------------------

def _side_note(results: Results) -> str:
    t = trees(results)
    return (
        f"Both sides in one run, one after the other, on the same machine and the same number "
        f"of pool processes ({t.get('running_target')}). Ours: the root is a queued row in a "
        f"queue no worker reads and the children `distill`s "
        f"({(t.get('ours') or {}).get('settings', {}).get('kwargs')}), all made by one "
        f"`submit_batch` call; every running child's pool process runs on one of three "
        f"simulated hosts and reaches PostgreSQL through PgBouncer, as the API does. "
        f"CANCEL_GRACE is {t.get('cancel_grace_s')} s. Our times run from `time.time()` just "
        f"before the call: a running child is stopped when its row is terminal and its "
        f"worker logged `task.finished` (the pool process free again); every child's state "
        f"is recorded when the bench's 20 ms poll finds none unfinished. Celery's times run "
        f"from before the revoke call (bench/trees_celery.py, polled every 10 ms); its members "
        f"sleep in 50 ms steps and save nothing.")


def _rounds_note(results: Results) -> str:
    return ("`heard via`: how each running child's token was set (`event`: its cancel "
            "channel; `poll`: the worker's heartbeat reading the row). `queue empty`: the "
            "workers' queue in Redis, where the never-started children's messages wait until "
            "a worker takes each and drops it. The in-process round is the same cancel run by "
            "`Canceller.cancel()` in the bench's process, to time its steps.")


def _spans_note(results: Results) -> str:
    return ("The steps `Canceller.cancel()` takes for a tree root, timed by wrapping the "
            "methods of its own `Db`, `TreeControl` and `Canceller` instances (the product's "
            "code unchanged), through PgBouncer as the API runs it.")


def _alone_note(results: Results) -> str:
    st = (trees(results).get("ours") or {}).get("statement") or {}
    cfg = st.get("settings") or {}
    return (f"After the rounds, a tree of the same size whose children wait in a queue no "
            f"worker reads: its subtree statement run {st.get('repeats', '?')} times in each "
            f"mode (medians), each in a transaction rolled back, through a direct connection: "
            f"`client` is the call from asyncpg (rows decoded), the rest PostgreSQL's own "
            f"account (`EXPLAIN (ANALYZE, FORMAT JSON)`, run apart). The server's JIT settings: "
            + ", ".join(f"{k} = {v}" for k, v in cfg.items())
            + ". The ZADD goes to a key of its own on the fleet's Redis (deleted after), as "
              "redis-py sends it.")


SECTIONS: tuple[tuple[str, Any], ...] = ((SIDE, _side_note), (ROUNDS, _rounds_note),
                                         (SPANS, _spans_note), (ALONE, _alone_note))
