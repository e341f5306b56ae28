"""The simulated section's tables, goal and notes, for the terminal and RESULTS.md."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.figures import Results, number

LOAD = "8. Simulated executions: load per running task and second"
TIMES = "8. Simulated executions: latency, CPU and the reaper"
ALONE = "8. The heartbeat statement alone (pgbench)"


def _sim(results: Results) -> dict[str, Any]:
    return results.get("simulated") or {}


def _runs(results: Results) -> list[dict[str, Any]]:
    return [r for r in _sim(results).get("runs") or [] if "error" not in r]


def _pp(d: dict[str, Any] | None, digits: int = 1) -> str:
    if not d or not d.get("n"):
        return "—"
    return f"{d['p50']:,.{digits}f} / {d['p99']:,.{digits}f}"


def _xacts_per_statement(r: dict[str, Any]) -> float | None:
    c = r.get("cross_check") or {}
    return c["pg_xact_commit_run"] / c["counted_run"] if c.get("counted_run") else None


def _kept_up(r: dict[str, Any]) -> bool:
    return (r.get("beats") or {}).get("ratio", 0) >= 0.95


# -- tables --------------------------------------------------------------------------------

def load_rows(results: Results) -> list[list[str]]:
    rows = []
    for r in _sim(results).get("runs") or []:
        if "error" in r:
            rows.append([f"{r['running']:,}", f"failed: {r['error'][:100]}"] + ["—"] * 6)
            continue
        per = r["statements_per_task_s"]
        beats, redis, cross = r["beats"], r["redis"], r["cross_check"]
        ratio = _xacts_per_statement(r)
        rows.append([
            f"{r['running']:,}",
            f"{beats['achieved_per_s']:,.0f} of {beats['target_per_s']:,.0f} "
            f"({beats['ratio'] * 100:.0f}%)",
            f"{per['sidecar']:.3f} / {per['guardian']:.3f} / {per['reaper']:.3f}",
            f"{per['total']:.3f}",
            f"{cross['counted']:,} / {cross['pgbouncer_xacts'] or 0:,}",
            number(ratio, 2),
            f"{redis['sidecar_per_task_s']:.2f} / {redis['per_task_s']:.2f}",
            ", ".join(f"{k} {v:,}" for k, v in list(redis["commands_server"].items())[:5]),
        ])
    return rows


def times_rows(results: Results) -> list[list[str]]:
    rows = []
    for r in _runs(results):
        lat, cores, rec = r["latency_ms"], r["cores"], r.get("reconcile") or {}
        findings = ", ".join(f"{k} {v:,}" for k, v in (rec.get("findings") or {}).items())
        failed = r["beats"].get("node_beat_failed", 0)
        rows.append([
            f"{r['running']:,}",
            _pp(lat.get("node_beat_ms")) + (f" ({failed:,} failed)" if failed else ""),
            _pp(lat.get("statement_ms:node_heartbeat")),
            _pp(lat.get("register_ms")),
            _pp(lat.get("period_ms"), 0),
            number((lat.get("loop_lag_ms") or {}).get("p99"), 1),
            f"{cores['postgres_backends']:.2f} / {cores['pgbouncer']:.2f} / "
            f"{cores.get('redis_main_thread', cores['redis']):.2f} / "
            f"{cores['generators']:.2f} / {cores['everything_else']:.2f}",
            (f"{number(rec.get('median_ms'), 0)} / {number(rec.get('max'), 0)} (n={rec.get('n', 0)})"
             + (f"; {number(rec.get('without_celery_median_ms'), 0)} / "
                f"{number(rec.get('without_celery_max_ms'), 0)} without Celery's reply waits"
                if rec.get("celery_wait_ms_total") else "")
             + (f"; found {findings}" if findings else "")),
            f"{r['oldest_heartbeat_s']:,.1f} s",
        ])
    return rows


def alone_rows(results: Results) -> list[list[str]]:
    rows = []
    for r in _runs(results):
        for via, b in (r.get("pgbench") or {}).items():
            if b.get("exit_code"):
                rows.append([f"{r['running']:,}", via, f"failed: {b.get('error', '')[:80]}"]
                            + ["—"] * 4)
                continue
            cpu = b["cpu_us"]
            rows.append([
                f"{r['running']:,}", via,
                f"{b['rate_achieved']:,.0f} of {b['rate_target']:,.0f} "
                f"({(b['ratio'] or 0) * 100:.0f}%)",
                _pp(b["latency_ms"], 2) + f" (lag p99 {number(b['schedule_lag_ms'].get('p99'), 1)})",
                f"{cpu['postgres_per_statement']:,.0f} / {cpu['pgbouncer_per_statement']:,.0f}",
                f"{b['cores']['postgres_backends']:.2f} / {b['cores']['pgbouncer']:.2f} / "
                f"{b['cores']['everything_else']:.2f}",
                number(b["pg_xacts_per_statement"], 2),
            ])
    return rows


TABLES: tuple[tuple[str, list[str], Any], ...] = (
    (LOAD, ["running", "beats/s (of target)",
            "DB statements per task-s: pool processes' own / node beats / reaper", "total",
            "statements counted / PgBouncer's count", "PostgreSQL commits per statement",
            "Redis commands per task-s: sidecar / all", "Redis commands in the window"],
     load_rows),
    (TIMES, ["running", "node beat call p50 / p99 (ms)", "of it the statement p50 / p99",
             "register() p50 / p99", "beat period p50 / p99", "generator loop lag p99",
             "cores: PostgreSQL / PgBouncer / Redis / generators / others",
             "reconcile pass median / max (ms)", "oldest heartbeat at the end"], times_rows),
    (ALONE, ["running", "via", "statements/s (of target)", "latency p50 / p99 (ms)",
             "CPU µs per statement: PostgreSQL / PgBouncer",
             "cores: PostgreSQL / PgBouncer / others", "PostgreSQL commits per statement"],
     alone_rows),
)


# -- notes ---------------------------------------------------------------------------------

def _load_note(results: Results) -> str:
    s = _sim(results)
    return (
        f"Each run: N `queued` rows in a database of their own, claimed one by one with "
        f"`Db.claim_task` by N simulated executions spread over {s.get('generators', '?')} "
        f"generator processes (asyncio), which then do, every "
        f"min(HEARTBEAT_INTERVAL, CANCEL_POLL_INTERVAL), what `Heartbeat.run` does: "
        f"`RegistryEntry.refresh` (one ZADD pushing the entry's expiry on) and the beat handed "
        f"to the node's main process (`Db.heartbeat` of the process's own only when the main "
        f"process has not answered for `takeover_after`). Worker nodes of "
        f"{s.get('node_size', '?')} pool processes, each with its guardian's "
        f"`Db.node_heartbeat` every interval: the node's beats written and every execution's "
        f"state read back in one statement, then its answer to each beat (a `task.progress` "
        f"PUBLISH when the progress changed; the simulated task finishes a chunk every "
        f"{s.get('chunk_s', 1):g} s, so every beat carries new progress). The hand-over between "
        f"a pool process and its main process (a datagram on a Unix socket) is an assignment "
        f"here. Every DB call goes through a "
        f"PgBouncer in transaction mode ({s.get('db_connections_per_generator', '?')} "
        f"client connections per generator, at most {s.get('pgbouncer_pool_size', '?')} "
        f"server connections); Redis commands over {s.get('redis_connections_per_generator', '?')} "
        f"pooled connections per generator, the cancel subscriptions "
        f"{s.get('channels_per_subscriber', '?'):,} channels to a subscriber connection, on a "
        f"Redis server of the bench's own. The reaper's five loops run in the bench's process "
        f"as its daemon schedules them; Celery's own broker traffic is not simulated (the fleet "
        f"section measures it with real workers). Counted over a "
        f"{s.get('window_s', '?'):g} s window once "
        f"every execution has started: the statements the generators and the reaper sent "
        f"(by query), checked against PgBouncer's own transaction count over the same window, "
        f"and for the whole run against PostgreSQL's committed transactions "
        f"(`pg_stat_database`); Redis commands from INFO commandstats. A task-second is one "
        f"running task for one second.")


def _times_note(results: Results) -> str:
    return (
        "The node beat call is `Db.node_heartbeat` as the guardian awaits it, waiting for a "
        "pooled connection included (with one DB connection per worker's main process a real "
        "fleet waits in PgBouncer instead); the statement is the same call once a connection "
        "was had. The beat period is the time between two beats of one execution: the "
        "interval plus the beat's own time (its registry refresh), as the sidecar sleeps "
        "after each beat. Loop lag: how late each "
        "generator's event loop woke a 50 ms sleep, its own saturation. Cores: CPU time over "
        "the window (psutil) of the PostgreSQL backends serving the database, PgBouncer, "
        "Redis's main thread (INFO cpu), the generators, and everything else the machine ran. "
        "Reconcile: `Reconciler.tick()` passes that began in the window, and what they found "
        "(a kill or an inspect through Celery waits its whole reply timeout, as no simulated "
        "node answers: the pass is also given without those waits); "
        "the oldest heartbeat is `max(now() - heartbeat_at)` over the running rows right after "
        "the window (past HEARTBEAT_TIMEOUT the reaper takes a running task for dead).")


def _alone_note(results: Results) -> str:
    return (
        "After the simulated executions stop (and the reaper with them), `pgbench` (C, a few "
        "tens of µs per statement on the client) sends `Db.node_heartbeat`'s statement (the "
        "beats of one node's pool processes, its rows' numbers consecutive) at the rate the "
        "nodes of N executions beat, on N running rows of its own (ids derived from the row "
        "number), for a few seconds, through the same PgBouncer and then straight to "
        "PostgreSQL; 16 "
        "clients, extended protocol (parsed and planned each time, as asyncpg's unnamed "
        "statements are), client_encoding announced as the services' pool announces it. "
        "It answers whether PostgreSQL and PgBouncer keep up at that rate, and at what CPU per "
        "statement, without the Python generators in the way. Latency is pgbench's per "
        "transaction; lag is how late it could start a transaction its schedule wanted.")


SECTIONS: tuple[tuple[str, Any], ...] = ((LOAD, _load_note), (TIMES, _times_note),
                                         (ALONE, _alone_note))


# -- observations --------------------------------------------------------------------------

def _capacity(results: Results, via: str) -> dict[str, Any] | None:
    """The pgbench run (through `via`) that could not keep its rate: what it did is what
    PostgreSQL (and PgBouncer) managed on this machine."""
    saturated = [r["pgbench"][via] for r in _runs(results)
                 if ((r.get("pgbench") or {}).get(via) or {}).get("exit_code") == 0
                 and (r["pgbench"][via].get("ratio") or 1) < 0.95]
    return max(saturated, key=lambda b: b["rate_target"]) if saturated else None


def cost_at(results: Results, running: int = 10_000) -> dict[str, Any] | None:
    """What `running` tasks would send and cost. The protocol's rates per task come from the
    largest run whose executions kept their interval (the reaper's statements are per second,
    whatever the count); CPU per statement and per Redis command from the run that sent the
    most (servers spend less per operation when busier); PostgreSQL's ceiling from pgbench
    where it could not keep its rate."""
    runs = _runs(results)
    kept = ([r for r in runs if r["beats"]["ratio"] >= 0.95]
            or [r for r in runs if r["beats"]["ratio"] >= 0.75])
    if not kept:
        return None
    base = max(kept, key=lambda r: r["running"])
    busiest = max(runs, key=lambda r: r["statements_per_s"])
    w, per = base["window_s"], base["statements_per_task_s"]
    reaper_per_s = base["statements"]["reaper"] / w
    statements = running * (per["sidecar"] + per["guardian"]) + reaper_per_s
    commands = base["redis"]["sidecar_per_task_s"] * running
    bw = busiest["window_s"]
    busy_commands = sum(busiest["redis"]["commands_server"].values()) / bw
    redis_us = (busiest["cores"].get("redis_main_thread", busiest["cores"]["redis"]) * 1e6
                / max(1.0, busy_commands))
    pg_us = busiest["cpu_us"]["postgres_per_statement"]
    bouncer_us = busiest["cpu_us"]["pgbouncer_per_statement"]
    ratio = _xacts_per_statement(base) or 1.0
    return {"from": base["running"], "ratio": base["beats"]["ratio"], "running": running,
            "costs_from": busiest["running"],
            "per_task_s": per["sidecar"] + per["guardian"], "reaper_per_s": reaper_per_s,
            "statements_per_s": statements, "pg_commits_per_s": statements * ratio,
            "redis_commands_per_s": commands,
            "pg_us": pg_us, "pgbouncer_us": bouncer_us, "redis_us": redis_us,
            "postgres_cores": statements * pg_us / 1e6,
            "pgbouncer_cores": statements * bouncer_us / 1e6,
            "redis_cores": commands * redis_us / 1e6,
            "capacity": _capacity(results, "pgbouncer"),
            "capacity_direct": _capacity(results, "direct")}


def _ceilings(cost: dict[str, Any], cores: int, sim: dict[str, Any]) -> dict[str, float]:
    """Running tasks at which each server would have used all it can: PostgreSQL what
    pgbench got out of it through PgBouncer (else every core at the measured cost), one
    thread for PgBouncer and for Redis's main thread, and Redis's connection limit for a
    fleet that holds two connections a pool process and one more a worker node."""
    per_task = max(1e-9, cost["per_task_s"])
    commands = max(1e-9, cost["redis_commands_per_s"] / cost["running"])
    cap = cost.get("capacity")
    pg = (cap["rate_achieved"] if cap else cores * 1e6 / max(1e-9, cost["pg_us"]))
    out = {
        "PostgreSQL's CPU": max(0.0, pg - cost["reaper_per_s"]) / per_task,
        "PgBouncer's one thread": max(0.0, 1e6 / max(1e-9, cost["pgbouncer_us"])
                                      - cost["reaper_per_s"]) / per_task,
        "Redis's main thread": 1e6 / max(1e-9, cost["redis_us"]) / commands,
    }
    if sim.get("redis_maxclients"):
        out["Redis's maxclients"] = sim["redis_maxclients"] / (
            2 + 1 / max(1, sim.get("node_size") or 2))
    return out


def observations(results: Results) -> list[str]:
    s = _sim(results)
    runs = _runs(results)
    if not runs:
        return [f"The simulated section failed: {r['error']}"
                for r in s.get("runs") or [] if "error" in r]
    out = []
    ratio = next((_xacts_per_statement(r) for r in runs if _xacts_per_statement(r)), None)
    direct = next((r["pgbench"]["direct"]["pg_xacts_per_statement"] for r in runs
                   if (r.get("pgbench") or {}).get("direct", {}).get("exit_code") == 0), None)
    if ratio and ratio > 1.5:
        out.append(
            f"Behind PgBouncer, PostgreSQL commits {ratio:.2f} transactions for every statement "
            f"the services send"
            + (f" ({direct:.2f} when pgbench connects straight to PostgreSQL)" if direct else "")
            + ": asyncpg announces `client_encoding` as `'utf-8'` in its startup packet, "
              "PostgreSQL reports `UTF8`, and PgBouncer, finding the two different, sends "
              "`SET client_encoding` to the server connection before each transaction it "
              "hands to an asyncpg client. In transaction mode that is every statement: one "
              "more round trip between PgBouncer and PostgreSQL and one more transaction "
              "each.")
    elif ratio:
        out.append(
            f"Behind PgBouncer, PostgreSQL committed {ratio:.2f} transactions for every "
            f"statement the simulated executions and the reaper sent over the whole run "
            f"(above 1.00: connection set-up and PostgreSQL's own background work): PgBouncer "
            f"hands each transaction to a server connection without a SET first, as the pool "
            f"announces client_encoding the way PostgreSQL reports it.")
    cost = cost_at(results)
    if cost:
        out.append(
            f"Per running task, from the {cost['from']:,}-task run ({cost['ratio'] * 100:.0f}% "
            f"of its beats sent): {cost['per_task_s']:.2f} DB statements a second (its share "
            f"of its node's heartbeat statement, and any of its own) and "
            f"{cost['redis_commands_per_s'] / cost['running']:.1f} Redis "
            f"commands a second from the sidecar, plus the reaper's {cost['reaper_per_s']:.0f} "
            f"statements a second whatever the count. At {cost['running']:,} running tasks: "
            f"{cost['statements_per_s']:,.0f} statements ({cost['pg_commits_per_s']:,.0f} "
            f"PostgreSQL commits) and {cost['redis_commands_per_s']:,.0f} Redis commands a "
            f"second. At the CPU each took in the busiest run (the {cost['costs_from']:,}-task "
            f"one: {cost['pg_us']:,.0f} µs of PostgreSQL and {cost['pgbouncer_us']:,.0f} µs of "
            f"PgBouncer a statement, {cost['redis_us']:,.1f} µs of Redis's main thread a "
            f"command), that is about {cost['postgres_cores']:.1f} cores of PostgreSQL, "
            f"{cost['pgbouncer_cores']:.2f} of PgBouncer's one thread and "
            f"{cost['redis_cores']:.2f} of Redis's one main thread: a linear extrapolation.")
        cores = (results.get("meta", {}).get("machine") or {}).get("cores") or 2
        limits = sorted(_ceilings(cost, cores, s).items(), key=lambda kv: kv[1])
        cap, direct = cost.get("capacity"), cost.get("capacity_direct")
        out.append(
            "Where each server runs out at that cost per task: "
            + ", ".join(f"{name} at about {n:,.0f} running tasks" for name, n in limits)
            + f". First: {limits[0][0]}. (PostgreSQL: as far as pgbench through PgBouncer "
              f"got it, else every core at the cost above; Redis's connections: two a pool "
              f"process, one more a worker node, Celery's own left out.)"
            + (f" PostgreSQL on this machine's {cores} cores (shared with pgbench and "
               f"PgBouncer) did {cap['rate_achieved']:,.0f} node heartbeat statements a second "
               f"through PgBouncer"
               + (f" and {direct['rate_achieved']:,.0f} straight" if direct else "")
               + f" when {cap['rate_target']:,.0f} were asked for: it does not keep up with "
                 f"{cost['running']:,} running tasks here." if cap else ""))
    big = max(runs, key=lambda r: r["running"])
    if not _kept_up(big):
        b, rec = big["beats"], big.get("reconcile") or {}
        findings = rec.get("findings") or {}
        c = big["cores"]
        text = (
            f"At {big['running']:,} running the simulated executions sent "
            f"{b['achieved_per_s']:,.0f} beats a second of the {b['target_per_s']:,.0f} their "
            f"interval asks ({b['ratio'] * 100:.0f}%), with the machine's "
            f"{c['machine_busy']:.1f} busy cores split as PostgreSQL "
            f"{c['postgres_backends']:.2f}, PgBouncer {c['pgbouncer']:.2f}, Redis "
            f"{c.get('redis_main_thread', c['redis']):.2f}, generators {c['generators']:.2f}, "
            f"others {c['everything_else']:.2f}.")
        if b.get("node_beat_failed"):
            text += (f" {b['node_beat_failed']:,} node heartbeats failed (the guardian's 5 s "
                     f"DB call timeout).")
        if b.get("own_per_s"):
            text += (f" Executions whose main process had not answered in time wrote "
                     f"{b['own_per_s']:,.0f} beats a second of their own.")
        if b["failed"]:
            text += (f" {b['failed']:,} of those gave up after the sidecar's 5 s DB call "
                     f"timeout.")
        text += (f" The oldest heartbeat was {big['oldest_heartbeat_s']:,.0f} s old at the "
                 f"end (HEARTBEAT_TIMEOUT {big['settings']['heartbeat_timeout_s']:g} s)")
        if findings:
            text += (", and the reaper acted on it: "
                     + ", ".join(f"{k} {v:,}" for k, v in findings.items())
                     + f" (its slowest pass took {rec.get('max', 0) / 1000:,.1f} s). A "
                       f"zombie is a running row whose heartbeat and registry entry had both "
                       f"gone stale, here because the generators, out of CPU, sent neither; "
                       f"undead are the registry entries of rows it had ended that were then "
                       f"refreshed, which the reaper asks the worker to kill (each request "
                       f"waiting Celery's reply timeout, as no simulated node answers)")
        out.append(text + ". The generators ran out of CPU before any server did: "
                   "what this run says about the servers is their cost per operation, not "
                   "their ceiling.")
    alone = (big.get("pgbench") or {})
    for via in ("pgbouncer", "direct"):
        b = alone.get(via)
        if b and not b.get("exit_code"):
            out.append(
                f"The node heartbeat statement alone at {b['rate_target']:,.0f}/s ({via}, "
                f"pgbench, {s.get('node_size', 2)} rows each): "
                f"{b['rate_achieved']:,.0f}/s done ({(b['ratio'] or 0) * 100:.0f}%), latency "
                f"p50 {b['latency_ms'].get('p50', 0):,.1f} / p99 "
                f"{b['latency_ms'].get('p99', 0):,.1f} ms, PostgreSQL's backends using "
                f"{b['cores']['postgres_backends']:.2f} cores "
                f"({b['cpu_us']['postgres_per_statement']:,.0f} µs a statement)"
                + (f", PgBouncer {b['cores']['pgbouncer']:.2f}" if via == "pgbouncer" else "")
                + f", everything else on the machine {b['cores']['everything_else']:.2f}.")
    maxclients = s.get("redis_maxclients")
    if maxclients:
        out.append(
            f"Connections, which the simulation pools and a fleet does not: each pool "
            f"process's sidecar holds two Redis connections (commands, and its cancel "
            f"subscriber) and one DB connection, and each worker's guardian one of each more. "
            f"10,000 running tasks on nodes of {s.get('node_size', 2)} are 10,000 pool "
            f"processes: over {2 * 10_000 + 10_000 // max(1, s.get('node_size', 2)):,} Redis "
            f"connections before Celery's own, against Redis's maxclients of {maxclients:,}, "
            f"and over 10,000 DB clients against PostgreSQL's max_connections of "
            f"{s.get('postgres_max_connections', '?')}, which PgBouncer (max_client_conn) "
            f"has to take instead.")
    return out


# -- the goal ------------------------------------------------------------------------------

def goal(results: Results) -> tuple[str, str, bool | None, str]:
    """(goal, measured, met, note) for `≤ 1 DB statement per task-second` at 100 running."""
    text = ("Simulated steady state: ≤ 1 DB statement per running task per second "
            "(100 running)")
    runs = [r for r in _runs(results) if r["running"] == 100] or _runs(results)[:1]
    if not runs:
        return text, "not measured", None, ""
    r = runs[0]
    per = r["statements_per_task_s"]
    ratio = _xacts_per_statement(r)
    measured = (f"{per['total']:.2f} at {r['running']:,} running: node heartbeats "
                f"{per['guardian']:.2f}, pool processes' own {per['sidecar']:.2f}, reaper "
                f"{per['reaper']:.2f}" + (f"; PostgreSQL committed {ratio:.1f} transactions per "
                                           f"statement behind PgBouncer" if ratio else ""))
    met = per["total"] <= 1.0
    interval = r.get("interval_s", 1.0)
    note = "" if met else (
        f"Each worker node's main process writes its pool processes' beats in one "
        f"`Db.node_heartbeat` every min(HEARTBEAT_INTERVAL, CANCEL_POLL_INTERVAL) = "
        f"{interval:g} s ({per['guardian']:.2f} per task-second with "
        f"{r.get('node_size', '?')} pool processes a node); the pool processes wrote "
        f"{per['sidecar']:.2f} of their own (a main process that did not answer in time), and "
        f"the reaper's loops cost a fixed {r['statements']['reaper'] / r['window_s']:.0f} "
        f"statements a second ({per['reaper']:.2f} per task-second at {r['running']:,} "
        f"running, nothing at 10,000). Larger nodes make the node beat's share smaller "
        f"(1/(concurrency x interval) per task-second)."
        + (f" Behind PgBouncer, PostgreSQL also committed {ratio:.1f} transactions per "
           f"statement (see Observations)." if ratio and ratio > 1.5 else ""))
    return text, measured, met, note


def goals(results: Results) -> list[dict[str, Any]]:
    if "simulated" not in results:
        return []
    from bench.goals import Goal

    return [asdict(Goal(*goal(results)))]
