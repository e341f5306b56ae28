"""The goals the figures are held against: reported, never asserted. Where a goal is missed,
the note says why and what would reach it, from this run's own breakdowns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.figures import Results
from bench.latencies import by_key


@dataclass
class Goal:
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run
    note: str = ""


def _settings(results: Results) -> dict[str, Any]:
    return results.get("meta", {}).get("settings") or {}


def _pp(dist: dict[str, Any] | None) -> str:
    """'p50 X / p99 Y ms' for a distribution, or a dash."""
    if not dist or not dist.get("n"):
        return "—"
    return f"p50 {dist['p50']:.1f} / p99 {dist['p99']:.1f} ms"


def _api_side(results: Results) -> str:
    """Where the cooperative path's time goes, from this run's breakdowns."""
    coop = results.get("cooperative") or {}
    trips = results.get("round_trips") or {}
    text = (f"Nearly all of it is the API's work before the event leaves, not the event: "
            f"cancel call → event published {_pp(coop.get('announced'))}, event published → "
            f"token observed {_pp(coop.get('delivery'))}.")
    if trips:
        announced, alone = coop.get("announced") or {}, trips.get("canceller_cancel") or {}
        text += (f" In a process of its own, `Canceller.cancel()` took {_pp(alone)}: the DB "
                 f"write {_pp(trips.get('cancel_db_write'))}, the announce "
                 f"{_pp(trips.get('cancel_announce'))}. For scale on this machine: `SELECT 1` "
                 f"(two round trips) {_pp(trips.get('postgres_select_1'))}, a one-row INSERT "
                 f"(one round trip and the commit's WAL flush) "
                 f"{_pp(trips.get('postgres_insert'))}.")
        if announced.get("n") and alone.get("n"):
            text += (f" Through the API the same work took "
                     f"{announced['p50'] - alone['p50']:.1f} ms more at the median and "
                     f"{announced['p99'] - alone['p99']:.1f} ms more at p99: HTTP, the handler, "
                     f"and the API process waiting for one of two cores it shares with the "
                     f"worker, the reaper, both servers and the bench.")
    return text + (
        " The write is one statement sent as prepare + execute (asyncpg runs without a "
        "statement cache) whose commit waits for the WAL flush. What would reach it: a machine "
        "whose cores are not shared, for the tail; keeping prepared statements (asyncpg's "
        "statement cache; PgBouncer 1.21 and later keep them in transaction mode with "
        "`max_prepared_statements`) saves one round trip; `SET LOCAL synchronous_commit = off` "
        "for the cancel would drop the flush wait, at the price of a cancel that a PostgreSQL "
        "crash within a fraction of a second could forget.")


def _cooperative(results: Results) -> Goal:
    goal = "Cooperative: token observed p99 < 10 ms"
    lat = by_key(results).get("coop_observed")
    if lat is None:
        return Goal(goal, "not measured", None)
    p99 = lat.dist["p99"]
    met = p99 < 10
    return Goal(goal, f"p99 {p99:.1f} ms (p50 {lat.dist['p50']:.1f}, max {lat.dist['max']:.1f}; "
                      f"n={lat.dist['n']})", met, "" if met else _api_side(results))


def _terminal_vs_celery(results: Results) -> Goal:
    goal = "Cooperative: row terminal p99 ≤ Celery revoke(terminate) p99, same run"
    found = by_key(results)
    ours, theirs = found.get("coop_terminal"), found.get("celery_terminate")
    if ours is None or theirs is None:
        return Goal(goal, "not measured", None)
    a, b = ours.dist["p99"], theirs.dist["p99"]
    met = a <= b
    coop = results.get("cooperative") or {}
    note = "" if met else (
        "Celery's revoke is one broadcast and records nothing; ours commits the cancel to "
        "PostgreSQL before the event leaves (cancel call → event published "
        f"{_pp(coop.get('announced'))}), then the task commits its end. The API's part is "
        "broken down under the goal above, and so is what would shorten it.")
    return Goal(goal, f"ours p99 {a:.1f} ms vs Celery p99 {b:.1f} ms", met, note)


def _check(results: Results) -> Goal:
    goal = "One cancellation check < 1 µs"
    tok = results.get("check_token")
    if not tok:
        return Goal(goal, "not measured", None)
    worst = max(tok["cancelled_attr_ns"], tok["raise_if_cancelled_ns"])
    measured = (f"`token.cancelled` {tok['cancelled_attr_ns']:.0f} ns, "
                f"`raise_if_cancelled()` {tok['raise_if_cancelled_ns']:.0f} ns")
    aborted = results.get("check_is_aborted")
    if aborted:
        measured += f" (Celery `is_aborted()` {aborted['is_aborted_us']:.0f} µs)"
    met = worst < 1000
    return Goal(goal, measured, met, "" if met else
                "The check is an attribute read; a figure this high means the timing loop was "
                "starved of CPU: run again on a quiet machine.")


def _killers(run: dict[str, Any]) -> str:
    by = run.get("killed_by") or {}
    return ", ".join(f"{n}× {k}" for k, n in by.items()) or "unknown"


def _sleep_note(results: Results) -> str:
    run = (results.get("uncooperative") or {}).get("sleep") or {}
    coop = results.get("cooperative") or {}
    return (f"Killed by: {_killers(run)}. The pool process's watchdog starts its grace period "
            f"when the cancel event arrives, which is after the API's write (cancel call → "
            f"event published {_pp(coop.get('announced'))}), then records the end in "
            f"PostgreSQL and unregisters in Redis before it kills. Starting the grace period at "
            f"the deadline the API wrote (`cancel_deadline`, which the event could carry) would "
            f"take the API's part out of it.")


def _gil_note(results: Results) -> str:
    run = (results.get("uncooperative") or {}).get("gil") or {}
    settings = _settings(results)
    listeners = results.get("cancel_listeners") or {}
    text = (f"Killed by: {_killers(run)}. A pool process that holds the GIL cannot run its "
            f"own watchdog. The worker's main process (its guardian) kills it 50 ms after the "
            f"deadline when a cancel event has woken it; otherwise it finds the deadline on its "
            f"DB poll, every CANCEL_POLL_INTERVAL "
            f"({settings.get('cancel_poll_interval_s', '?')} s), and kills late. The reaper "
            f"kills through the worker only after the deadline plus KILL_MARGIN "
            f"({settings.get('kill_margin_s', '?')} s).")
    late = run.get("guardian_after_deadline") or {}
    if late.get("n"):
        text += (f" The guardian's kills came {_pp(late)} after the deadline "
                 f"(n={late['n']}).")
    later, expected = listeners.get("two_seconds_later"), listeners.get("expected")
    if later is not None and expected is not None and later < expected:
        text += (f" Its event never came: the cancel channel had {listeners['at_start']} "
                 f"subscribers right after the worker started, {later} two seconds later, "
                 f"{listeners.get('at_end')} at the end, where {expected} were expected (one per "
                 f"pool process, one for the guardian); see Observations. With its listener "
                 f"kept alive, every kill would be armed by the event and land at the deadline "
                 f"plus 50 ms and one DB write, within the goal.")
    return text


def _uncooperative(mode: str, key: str, label: str,
                   why: Callable[[Results], str]) -> Callable[[Results], Goal]:
    def evaluate(results: Results) -> Goal:
        run = (results.get("uncooperative") or {}).get(mode)
        goal = f"Uncooperative ({label}): process gone within grace + 250 ms, p99"
        lat = by_key(results).get(key)
        if lat is None or run is None:
            return Goal(goal, "not measured", None)
        over = lat.dist["p99"] - run["grace_s"] * 1000
        met = over <= 250
        return Goal(goal, f"p99 grace + {over:.0f} ms (grace {run['grace_s']:g} s; "
                          f"n={lat.dist['n']}; killed by {_killers(run)})",
                    met, "" if met else why(results))
    return evaluate


def _cancel_all(results: Results) -> Goal:
    goal = "cancel-all of 10,000: answered < 1 s, every row terminal within grace + 2 s"
    runs = [r for r in results.get("cancel_all") or [] if r["queued"] >= 10_000]
    if not runs:
        return Goal(goal, "not measured", None)
    grace = _settings(results).get("cancel_grace_s", 0.0)
    answered = max(r["response_ms"] for r in runs)
    settled = max(r["all_terminal_ms"] for r in runs)
    met = answered < 1000 and settled <= (grace + 2) * 1000
    note = "" if met else (
        "The answer waits for one transaction that updates every queued row and returns it, "
        "an audit row carrying every id, and a ZADD of every message id; `server took` in "
        "the table is that work. Returning counts instead of ids from the UPDATE and writing "
        "the ids to Redis in chunks after answering would bound it.")
    return Goal(goal, f"worst of {len(runs)}: answered in {answered:.0f} ms, all terminal "
                      f"after {settled:.0f} ms (grace {grace:g} s)", met, note)


def _reconcile(results: Results) -> Goal:
    goal = "Reconcile pass < 100 ms at 1,000,000 history rows (median)"
    runs = [r for r in results.get("reconcile") or [] if r["history_rows"] >= 1_000_000]
    if not runs:
        return Goal(goal, "not measured", None)
    r = runs[-1]
    met = r["pass_median_ms"] < 100
    parser = results.get("meta", {}).get("machine", {}).get("redis_py_parser", "?")
    first, rules = (results.get("reconcile") or [r])[0], r["rules_median_ms"]
    growth = ", ".join(f"{k} {first['rules_median_ms'][k]:.1f} → {v:.1f} ms"
                       for k, v in rules.items() if k != "undead")
    note = "" if met else (
        f"History is not what costs: from {first['history_rows']:,} to {r['history_rows']:,} "
        f"rows the rules that query it went {growth} (partial indexes). The undead rule "
        f"takes {rules.get('undead', 0):.1f} ms, and of that the registry read of "
        f"{r['active_rows']} live executions (ZRANGEBYSCORE with scores + HMGET + JSON) is "
        f"{r['registry_read_median_ms']:.1f} ms and the row lookup "
        f"{r['active_by_ids_median_ms']:.1f} ms. redis-py parses replies in {parser} here; "
        "the cost grows with live executions, not with history.")
    return Goal(goal, f"median {r['pass_median_ms']:.1f} ms, p99 {r['pass_ms']['p99']:.1f} ms "
                      f"({r['active_rows']} healthy running tasks)", met, note)


EVALUATORS: tuple[Callable[[Results], Goal], ...] = (
    _cooperative, _terminal_vs_celery, _check,
    _uncooperative("sleep", "sleep_gone", "stubborn sleep", _sleep_note),
    _uncooperative("gil", "gil_gone", "stubborn gil", _gil_note),
    _cancel_all, _reconcile,
)


def evaluate(results: Results) -> list[dict[str, Any]]:
    from bench import (  # build on Goal, defined here
        fleet_goals,
        simulated_report,
        task_cost_report,
        trees_goals,
    )

    return ([asdict(fn(results)) for fn in EVALUATORS] + fleet_goals.goals(results)
            + simulated_report.goals(results) + trees_goals.goals(results)
            + task_cost_report.goals(results))
