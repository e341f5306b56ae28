"""The scale section's tables, goals and notes, for the terminal and RESULTS.md."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.figures import Results, number, percentiles
from bench.goals import Goal

LOAD = "6. Scale: loading the backlog"
PASSES = "6. Scale: reaper passes over the backlog (ms)"
CANCEL = "6. Scale: cancel-all over the backlog"


def _scale(results: Results) -> dict[str, Any]:
    return results.get("scale") or {}


def _s(ms: float | None) -> str:
    return "—" if ms is None else f"{ms / 1000:,.2f} s"


def _median_run(block: dict[str, Any]) -> dict[str, Any] | None:
    runs = sorted(block.get("runs") or [], key=lambda r: r["ms"])
    return runs[len(runs) // 2] if runs else None


def _redis_line(cost: dict[str, Any] | None) -> str:
    if not cost:
        return "—"
    top = ", ".join(f"{name} {c['calls']}× {c['ms']:,.1f} ms"
                    for name, c in list(cost.get("commands", {}).items())[:3])
    slow = cost.get("slowest_on_our_keys") or []
    text = f"{cost['net_output_mib']:,.1f} MiB sent to clients; {top}"
    if slow:
        text += f"; slowest single command {slow[0]['ms']:,.1f} ms (`{slow[0]['command'][:40]}`)"
    return text


# -- tables --------------------------------------------------------------------------------

def load_rows(results: Results) -> list[list[str]]:
    load = _scale(results).get("load")
    if not load:
        return []
    n = load["rows"]
    return [
        [f"{n:,} `queued` rows (INSERT ... SELECT generate_series, 50,000 a statement)",
         f"{load['rows_s']:,.1f}", f"{load['rows_per_s'] or 0:,}",
         f"table and indexes {load['table_mib']:,.0f} MiB"],
        [f"{n:,} Celery messages (LPUSH of 1,000, 20 commands a round trip)",
         f"{load['messages_s']:,.1f}", f"{load['messages_per_s'] or 0:,}",
         f"{load['message_bytes']:,} B each, {load['messages_mib']:,.0f} MiB sent; Redis "
         f"used_memory +{load['redis_delta_mib']:,.0f} MiB "
         f"({load['redis_bytes_per_message']:,} B a message)"],
        ["`VACUUM ANALYZE tasks`", f"{load['vacuum_analyze_s']:,.1f}", "—", "—"],
    ]


def pass_rows(results: Results) -> list[list[str]]:
    passes = _scale(results).get("passes") or {}
    rows = []
    if passes.get("error"):
        return [["(failed)", "—", "—", "—", "—", passes["error"], "—"]]
    for key, label in (("reconcile", "`Reconciler.tick()`"),
                       ("broker_scan", "`BrokerScan.tick()`")):
        block = passes.get(key)
        if not block:
            continue
        dist = block["pass_ms"]
        run = _median_run(block) or {}
        parts = run.get("parts") or {}
        where = "; ".join(f"`{name}` {p['ms']:,.1f} ms"
                          + (f" ({p['items']:,})" if p.get("items") else "")
                          for name, p in parts.items()) or "—"
        if block.get("errors"):
            where += f"; errors: {block['errors'][0]}"
        rows.append([label, str(dist["n"]), number(block.get("median_ms")), number(dist["max"]),
                     number(block.get("without_broadcasts_median_ms")), where,
                     _redis_line(run.get("redis"))])
    return rows


def cancel_rows(results: Results) -> list[list[str]]:
    c = _scale(results).get("cancel_all")
    if not c:
        return []
    if "response_ms" not in c:
        return [["scenario", f"failed: {c.get('error')}"]]
    answer = c.get("answer") or {}
    rows = [["call", c.get("via", "—")],
             ["HTTP answer", f"{number(c['response_ms'])} ms"
              + ("" if c.get("ok") else f" — failed: {c.get('error')}")],
             ["server took (`took_ms`)", number(c.get("server_took_ms"))
              + (" ms" if c.get("server_took_ms") is not None else "")],
             ["answer", ", ".join(f"{k} {v}" for k, v in answer.items()) or "—"],
             ["first covered row terminal", _s(c.get("first_row_terminal_ms"))]]
    watched = _s(c.get("watched_ms"))
    rows.append(["every row terminal", _s(c["all_terminal_ms"]) if c.get("all_terminal_ms")
                 is not None else f"not within {watched}: {c.get('active_left') or 0:,} "
                                  f"still queued, running or cancelling"])
    rows.append(["backlog's messages gone from Redis",
                 _s(c["messages_gone_ms"]) if c.get("messages_gone_ms") is not None else
                 f"not within {watched}: {c.get('messages_left') or 0:,} of "
                 f"{c.get('messages_before') or 0:,} still queued"])
    for name, end in (c.get("running") or {}).items():
        rows.append([f"running `{name}` ended",
                     f"{_s(end.get('ms'))} ({end.get('status')}/{end.get('outcome')})"])
    locks = c.get("locks") or {}
    top = (locks.get("longest_holders") or [{}])[0]
    rows.append(["longest transaction holding a RowExclusiveLock on `tasks`",
                 f"{number(locks.get('longest_holder_ms'))} ms"
                 + (": " + " → ".join(f"`{q[:70]}`" for q in top.get("queries", []))
                    if top.get("queries") else "")])
    rows.append(["longest lock wait (any session)",
                 f"{number(locks.get('longest_lock_wait_ms'))} ms, at most "
                 f"{locks.get('max_sessions_waiting', 0)} sessions waiting"
                 + (f" (`{locks['longest_lock_wait_query'][:60]}`"
                    + (f", waiting for a `{locks['longest_lock_wait_event']}` lock"
                       if locks.get("longest_lock_wait_event") else "") + ")"
                    if locks.get("longest_lock_wait_query") else "")])
    probe = c.get("probe") or {}
    for step in ("claim", "insert", "cycle"):
        rows.append([f"other work: {step} during / before",
                     f"{percentiles((probe.get('during') or {}).get(step))} / "
                     f"{percentiles((probe.get('before') or {}).get(step))}"])
    refused, failed = probe.get("refused") or {}, probe.get("failed") or {}
    if refused.get("during") or failed.get("during"):
        rows.append(["other work: claims refused / failed during",
                     f"{refused.get('during', 0)} / {failed.get('during', 0)}"
                     + (f" ({probe['errors'][0]})" if probe.get("errors") else "")])
    rows.append(["covered tasks that started (attempt > 0)", f"{c.get('covered_started', '—')}"])
    rows.append(["covered rows by status at the end",
                 ", ".join(f"{k} {v:,}" for k, v in (c.get("covered_by_status") or {}).items())
                 or "—"])
    if c.get("audit"):
        a = c["audit"]
        rows.append(["audit row", ", ".join(f"{k} {v:,}" for k, v in a.items() if k != "id")])
    rows.append(["Redis meanwhile", _redis_line(c.get("redis"))
                 + f"; cancelled-id set {c.get('cancelled_set_size', 0):,} entries; used_memory "
                   f"{number(c.get('redis_used_memory_before_mib'))} → "
                   f"{number(c.get('redis_used_memory_after_mib'))} MiB"])
    if c.get("peak_rss_mib"):
        rows.append(["peak RSS (MiB)", ", ".join(f"{k} {v:,.0f}"
                                                 for k, v in c["peak_rss_mib"].items())])
    rows.append(["the bench's own polls: EXISTS every 100 ms / count(*) every second",
                 f"{percentiles(c.get('exists_query_ms'))} / {percentiles(c.get('count_query_ms'))}"])
    return rows


TABLES: tuple[tuple[str, list[str], Any], ...] = (
    (LOAD, ["what", "took (s)", "per second", "size"], load_rows),
    (PASSES, ["pass", "n", "median", "max", "median without broadcast waits",
              "where the median pass's time went", "Redis during the median pass"], pass_rows),
    (CANCEL, ["measure", "value"], cancel_rows),
)


# -- notes for RESULTS.md ------------------------------------------------------------------

def _load_note(results: Results) -> str:
    return ("The backlog: rows in `queued` (valid actor `distill`, kwargs `{}`, a fresh message "
            "id each, entered `queued` two hours before) in a database of their own, and for "
            "each one a real Celery message in the Redis list of a queue no worker reads: "
            "the message `celery.send_task` publishes for our tasks, published once and "
            "taken back as a template, with the task id, message id, body and delivery tag "
            "replaced. Redis `used_memory` is the whole server's, before and after the push.")


def _passes_note(results: Results) -> str:
    s = _scale(results)
    after = (s.get("passes") or {}).get("lost_message_after_s")
    return ("In-process, before any service starts, on a `ReaperContext` built as the daemon "
            f"builds it, with LOST_MESSAGE_AFTER {after or 60:g} s, so every backlog row "
            "counts as stranded to the broker scan (whose message is found in the queue, so "
            "nothing is re-sent). Reconcile: median of several passes after a warm-up; broker "
            "scan: each pass asked for as cancel-all asks for it. Celery's broadcasts "
            "(inspect active/reserved/scheduled) wait their whole timeout for replies whatever "
            "the backlog, so the scan is also given without them. Each `Db` method and each "
            "shared helper a pass called is timed, with how many items it returned "
            "(`db.stranded_queued` reads the stranded rows, `message_ids` the id of every "
            "message waiting in their queues); the Redis column is the server's own counters over the pass (INFO commandstats, "
            "INFO stats, SLOWLOG on our keys), other clients' traffic included.")


def _cancel_note(results: Results) -> str:
    s = _scale(results)
    grace = (s.get("settings") or {}).get("cancel_grace_s")
    return (
        "The backlog plus a running `distill` (cooperative) and a running `stubborn` (mode "
        "sleep) on one worker (prefork, 2), with the reaper and the API running "
        f"(CANCEL_GRACE {grace if grace is not None else '?'} s; the reaper's "
        "LOST_MESSAGE_AFTER is a day, so its broker scan leaves the backlog alone). Timed "
        "from before the call: the answer; every 100 ms whether any row is still queued, "
        "running or cancelling (`SELECT EXISTS`, the probe's queue left out) and LLEN of the "
        "backlog's lists, and every second `SELECT count(*)` of those rows (at a million "
        "active rows one count takes a backend a few hundred ms, so it is not run every "
        "100 ms), until no row is active and the lists are empty, or nothing moves for "
        "10 s. Locks: every "
        "20 ms the bench database's sessions; a transaction's age (`now() - xact_start`) "
        "while it holds a RowExclusiveLock on `tasks` bounds how long it has held the rows "
        "it wrote, and a session seen waiting for a lock shows how long its statement had run "
        "by then (its wait was at most that long) and the kind of lock (`extend`: adding a page "
        "to a table or index). "
        "Other work: every 50 ms one new row in another queue, INSERTed, claimed with "
        "`Db.claim_task` (the worker's claim) and finished, each step timed; the 2 s before "
        "the call are the comparison. A step that waits holds the next ones back, so a "
        "blocked period shows as one long sample. Covered tasks started: rows of the "
        "backlog whose `attempt` is above 0 (a claim raises it).")


SECTIONS: tuple[tuple[str, Any], ...] = ((LOAD, _load_note), (PASSES, _passes_note),
                                         (CANCEL, _cancel_note))


def observations(results: Results) -> list[str]:
    s = _scale(results)
    load = s.get("load")
    out = []
    if s.get("error"):
        out.append(f"The scale section stopped early: {s['error']}")
    if load:
        out.append(
            f"{load['rows']:,} waiting Celery messages of {load['message_bytes']:,} bytes "
            f"took {load['redis_delta_mib']:,.0f} MiB of Redis memory "
            f"({load['redis_bytes_per_message']:,} bytes each with the list's overhead); "
            f"their rows took {load['table_mib']:,.0f} MiB in PostgreSQL with indexes.")
    return out


# -- goals ---------------------------------------------------------------------------------

def _cancel_goal(results: Results) -> Goal:
    s = _scale(results)
    c = s.get("cancel_all") or {}
    goal = f"cancel-all with {s.get('size', 0):,} queued: answered < 200 ms"
    if "response_ms" not in c:
        return Goal(goal, "not measured" + (f" ({c['error']})" if c.get("error") else ""),
                    None)
    ok = bool(c.get("ok"))
    met = ok and c["response_ms"] < 200
    measured = (f"{'answered' if ok else 'failed'} after {c['response_ms']:,.0f} ms"
                + ("" if ok else f" ({c.get('error', '')[:120]})"))
    note = ""
    if not met:
        locks = c.get("locks") or {}
        top = (locks.get("longest_holders") or [{}])[0]
        took = c.get("server_took_ms")
        note = ((f"The server's own `took_ms` was {took:,.0f} ms. " if took is not None else "")
                + f"The longest transaction holding a RowExclusiveLock on `tasks` meanwhile "
                  f"lasted {number(locks.get('longest_holder_ms'))} ms, running "
                + " → ".join(f"`{q[:80]}`" for q in top.get("queries", [])) + ".")
        if (locks.get("longest_holder_ms") or 0) > 1000:
            note += (" Work that grows with the backlog runs inside the request: writing one "
                     "fence row and the running tasks' cancels there, and leaving the queued "
                     "rows to short batches afterwards, bounds the answer by the running "
                     "tasks, not the backlog.")
    return Goal(goal, measured, met, note)


def _terminal_goal(results: Results) -> Goal:
    s = _scale(results)
    c = s.get("cancel_all") or {}
    goal = f"cancel-all with {s.get('size', 0):,} queued: every row terminal < 30 s"
    if "response_ms" not in c:
        return Goal(goal, "not measured", None)
    done = c.get("all_terminal_ms")
    if done is not None:
        met = done < 30_000
        measured = f"after {done / 1000:,.1f} s"
    else:
        met = False
        measured = (f"not reached: {c.get('active_left') or 0:,} rows still active after "
                    f"{(c.get('watched_ms') or 0) / 1000:,.0f} s")
    gone = c.get("messages_gone_ms")
    measured += ("; messages gone after " + f"{gone / 1000:,.1f} s" if gone is not None else
                 f"; {c.get('messages_left') or 0:,} messages still in Redis")
    note = ""
    if not met:
        timeline = c.get("timeline") or []
        first = next((p for p in timeline if p[1] is not None), None)
        last = next((p for p in reversed(timeline) if p[1] is not None), None)
        if not c.get("ok"):
            note = f"The cancel-all call failed ({(c.get('error') or '')[:160]}). "
        if first and last and last[0] > first[0] and first[1] > last[1]:
            rate = (first[1] - last[1]) / ((last[0] - first[0]) / 1000)
            note += (f"Active rows went from {first[1]:,} to {last[1]:,} in "
                     f"{(last[0] - first[0]) / 1000:,.1f} s (about {rate:,.0f} a second).")
            note += _where_the_time_went(c, timeline, gone, results)
        else:
            note += f"Active rows stayed at {(last or first or [0, 0])[1] or 0:,}."
    return Goal(goal, measured, met, note)


def _where_the_time_went(c: dict[str, Any], timeline: list[Any], gone: float | None,
                         results: Results) -> str:
    """The sweep's pace while Redis was still purging the messages and after, what the purge
    cost Redis, and how busy the machine was: the sweep and the purge share its cores."""
    def pace(points: list[Any]) -> float | None:
        points = [p for p in points if p[1] is not None]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return None
        return (points[0][1] - points[-1][1]) / ((points[-1][0] - points[0][0]) / 1000)

    out = ""
    if gone is not None:
        during = pace([p for p in timeline if p[0] <= gone])
        after = pace([p for p in timeline if p[0] >= gone])
        if during is not None and after is not None:
            out += (f" The rows went about {during:,.0f} a second while the messages were "
                    f"being purged (until {gone / 1000:,.1f} s) and {after:,.0f} a second "
                    f"after.")
    script = ((c.get("redis") or {}).get("commands") or {}).get("evalsha")
    if script:
        out += (f" Redis spent {script['ms'] / 1000:,.1f} s in the purge script "
                f"({script['calls']:,} calls).")
    meta = results.get("meta") or {}
    load = meta.get("load_average") or {}
    if load.get("mean") is not None:
        cores = (meta.get("machine") or {}).get("cores", "?")
        out += (f" The 1-minute load average was {load['mean']} on average and "
                f"{load.get('max')} at most, on {cores} cores that PostgreSQL, Redis, the "
                f"services and the bench share.")
    return out


def _started_goal(results: Results) -> Goal:
    s = _scale(results)
    c = s.get("cancel_all") or {}
    goal = f"cancel-all with {s.get('size', 0):,} queued: no covered task started"
    if c.get("covered_started") is None:
        return Goal(goal, "not measured", None)
    n = c["covered_started"]
    return Goal(goal, f"{n:,} of {s.get('size', 0):,} started", n == 0,
                "" if n == 0 else "A claim took a covered row after the cancel-all.")


def _reconcile_goal(results: Results) -> Goal:
    s = _scale(results)
    block = (s.get("passes") or {}).get("reconcile")
    goal = f"Reconcile pass < 100 ms with {s.get('size', 0):,} queued (median)"
    if not block or block.get("median_ms") is None:
        return Goal(goal, "not measured", None)
    met = block["median_ms"] < 100
    return Goal(goal, f"median {block['median_ms']:,.1f} ms, max {block['pass_ms']['max']:,.1f} "
                      f"ms (n={block['pass_ms']['n']})", met,
                "" if met else "See where the median pass's time went in section 6.")


def _scan_goal(results: Results) -> Goal:
    s = _scale(results)
    block = (s.get("passes") or {}).get("broker_scan")
    goal = (f"Broker scan pass < 100 ms with {s.get('size', 0):,} queued and stranded "
            f"(median, Celery's broadcast reply waits left out)")
    if not block or block.get("without_broadcasts_median_ms") is None:
        return Goal(goal, "not measured", None)
    rest = block["without_broadcasts_median_ms"]
    met = rest < 100
    run = _median_run(block) or {}
    parts = run.get("parts") or {}
    measured = (f"median {rest:,.0f} ms without the broadcasts, {block['median_ms']:,.0f} ms "
                f"with them (n={block['pass_ms']['n']})")
    note = ""
    if not met:
        top = sorted(((k, v) for k, v in parts.items() if k != "celery_broadcasts"),
                     key=lambda kv: -kv[1]["ms"])[:3]
        cost = run.get("redis") or {}
        slow = (cost.get("slowest_on_our_keys") or [{}])[0]
        note = ("Where the median pass went: "
                + "; ".join(f"`{k}` {v['ms']:,.0f} ms"
                            + (f" ({v['items']:,} items)" if v.get("items") else "")
                            for k, v in top)
                + f". Redis sent {cost.get('net_output_mib', 0):,.0f} MiB to clients during "
                  "the pass"
                + (f", and its slowest single command on our keys took {slow['ms']:,.0f} ms, "
                   f"during which the shared server answered no one"
                   if slow.get("ms") else "")
                + ". A pass that looks at a bounded batch of the oldest stranded rows and asks "
                  "Redis only about their messages costs the same at any backlog.")
    return Goal(goal, measured, met, note)


EVALUATORS = (_cancel_goal, _terminal_goal, _started_goal, _reconcile_goal, _scan_goal)


def goals(results: Results) -> list[dict[str, Any]]:
    if "scale" not in results:
        return []
    return [asdict(fn(results)) for fn in EVALUATORS]
