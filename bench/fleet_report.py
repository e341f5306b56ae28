"""The fleet section's tables, goals and notes, for the terminal and RESULTS.md."""

from __future__ import annotations

from typing import Any

from bench.figures import Results, number, percentiles

CANCEL = "7. Fleet: cancel-all across the pool processes of three hosts"
DELIVERIES = "7. Fleet: who receives one cancel"
CONNECTIONS = "7. Fleet: connections"
STEADY = "7. Fleet: steady state, per running task and second"
SAMPLE = 10_000


def _fleet(results: Results) -> dict[str, Any]:
    return results.get("fleet") or {}


def _size(f: dict[str, Any]) -> str:
    sizes = f.get("concurrency") or []
    return f"{sum(sizes)} pool processes ({'/'.join(str(s) for s in sizes)})"


def _failed(f: dict[str, Any]) -> list[list[str]]:
    if f.get("skipped"):
        return [["section", f"skipped: {f['skipped']}"]]
    if f.get("error"):
        return [["section", f"failed: {f['error']}"]]
    return []


# -- tables --------------------------------------------------------------------------------

def cancel_rows(results: Results) -> list[list[str]]:
    f = _fleet(results)
    c = f.get("cancel_all")
    if not c:
        return _failed(f) if f else []
    lat, cpu = c["latency"], c.get("cpu_until_observed") or {}
    singles = f.get("singles") or {}
    s = f.get("settings") or {}
    rows = [
        ["fleet", f"{_size(f)} on 3 simulated hosts; PgBouncer (transaction mode, "
                  f"{s.get('pgbouncer_pool_size')} server connections at most); a reaper"],
        ["tasks", f"{c['running']} `distill` running ({s.get('kwargs')}), {c['queued']} queued"],
        ["call", c["via"]],
        ["call → event sent (the DB transaction)", f"{number(c['event_sent_ms'])} ms; answered "
                                                   f"after {number(c['answered_ms'])} ms"],
        ["event receivers (PUBLISH's answer)", f"{c['event_receivers']} "
                                               f"({c['event_bytes']} B payload)"],
        ["call → token observed", percentiles(lat["from_call_ms"])],
        ["event sent → token observed", percentiles(lat["from_event_ms"])],
        ["first to last observed", f"{number(c['observed_spread_ms'])} ms"],
        ["event sent → token observed, by host (started in this order)",
         "; ".join(f"{h}: p50 {d['p50']:,.1f} / max {d['max']:,.1f} ms"
                   for h, d in (lat.get("from_event_by_host_ms") or {}).items()) or "—"],
        ["heard via", ", ".join(f"{n}× {k}" for k, n in lat["via"].items())
         + (f"; {c['not_observed']} never observed" if c["not_observed"] else "")],
        ["CPU until the last was observed",
         f"{number(cpu.get('total_cpu_ms'), 0)} ms in {number(cpu.get('wall_ms'), 0)} ms of "
         f"{cpu.get('cores')} cores: " + ", ".join(
             f"{k} {v:,.0f}" for k, v in (cpu.get("cpu_ms") or {}).items())],
        ["every row terminal (bench poll, 20 ms)", f"{number(c['all_terminal_ms'])} ms "
                                                   f"(grace {c['grace_s']:g} s)"],
        ["last running row's `finished_at`", f"{number(c['running_finished_ms'])} ms"],
        ["rows at the end", ", ".join(f"{e['n']} {e['status']}/{e['outcome']}"
                                      for e in c["ends"])],
        ["task channels still subscribed (given 2 s after every row was terminal)",
         str(c.get("task_channels_left", "—"))],
        ["PgBouncer meanwhile", f"clients waited {number(c['pgbouncer_client_wait_ms'])} ms in "
                                f"total for a server connection; at most "
                                f"{c['peak_pg_backends']} backends on the database"],
        ["single cancels: call → token observed", percentiles(singles.get("observed_ms"))],
    ]
    return rows


def delivery_rows(results: Results) -> list[list[str]]:
    f = _fleet(results)
    d = f.get("deliveries")
    if not d or "numsub" not in d:
        return []
    sub, one, wide = d["numsub"], d["single_cancel_channels"], d["fleet_channel"]
    listening = (f"; {d['task_channels']} task channels subscribed, {d['running']} tasks "
                 f"running" if "task_channels" in d else "")
    singles = f.get("singles") or {}
    c = f.get("cancel_all") or {}
    workers = ((f.get("connections") or {}).get("at_10k") or {}).get("workers",
                                                                     round(SAMPLE / 33))
    per_delivery = wide["net_output_bytes"] / max(wide["deliveries"], 1)
    return [
        ["single cancel: its task's channel + its worker's channel",
         f"{sub['task']} + {sub['node']}{listening}", number(one["per_event"], 0),
         f"{singles.get('receivers_per_cancel', '—')}", f"{one['bytes_per_event']:,}",
         "2 (extrapolated: independent of the fleet's size)"],
        ["the fleet-wide channel (what every single cancel used before)", f"{sub['fleet']}",
         number(wide["per_event"], 0), "—", f"{wide['bytes_per_event']:,}",
         f"{SAMPLE + workers:,} receivers, about "
         f"{(SAMPLE + workers) * per_delivery / 2**20:,.1f} MiB (extrapolated)"],
        ["cancel-all: one event on the fleet-wide channel", f"{sub['fleet']}", "—",
         f"{c.get('event_receivers', '—')}", "—",
         f"{SAMPLE + workers:,} receivers of one event (extrapolated)"],
    ]


def connection_rows(results: Results) -> list[list[str]]:
    f = _fleet(results)
    c = f.get("connections")
    if not c:
        return []
    pool_p, main_p = c["per_pool_process"], c["per_worker_main"]
    r, pg, at = c["redis"], c["pgbouncer"], c.get("at_10k") or {}
    redis_by, pg_by = r["by_process"], pg["clients_by_process"]

    def spread(d: dict[str, Any]) -> str:
        if not d.get("processes"):
            return "—"
        same = d["min"] == d["max"]
        return (f"{d['min']}" if same else f"{d['min']}–{d['max']} (mean {d['mean']:g})")

    return [
        ["each pool process", spread(pool_p["pgbouncer"]), spread(pool_p["redis"]),
         f"{r['subscribed_by_process'].get('pool', 0)} of {c['pool_processes']} "
         f"processes hold a subscribed connection"],
        ["each worker's main process (consumer, guardian)", spread(main_p["pgbouncer"]),
         spread(main_p["redis"]), f"{r['subscribed_by_process'].get('worker', 0)} subscribed"],
        ["reaper", str(pg_by.get("reaper", 0)), str(redis_by.get("reaper", 0)), ""],
        ["the bench itself", str(pg_by.get("bench", 0)), str(redis_by.get("bench", 0)),
         "left out of the figures below"],
        ["clients in all (PgBouncer SHOW CLIENTS / Redis CLIENT LIST)", str(pg["clients"]),
         f"{r['clients']} (maxclients {r['maxclients']:,})", ""],
        ["server connections PgBouncer opened (SHOW SERVERS)",
         f"{pg['server_connections']} of {pg['pool_size']} allowed "
         f"(PostgreSQL max_connections {c['postgres']['max_connections']})", "—", ""],
        [f"extrapolated: {at.get('pool_processes', SAMPLE):,} pool processes in "
         f"{at.get('workers', '?')} workers", f"{at.get('pgbouncer_clients', 0):,} clients",
         f"{at.get('redis_clients', 0):,} clients, of them {at.get('redis_subscribers', 0):,} "
         f"subscribed", f"Redis maxclients {at.get('redis_maxclients', 0):,}"],
    ]


def steady_rows(results: Results) -> list[list[str]]:
    f = _fleet(results)
    st = f.get("steady")
    if not st:
        return []
    limit = ((f.get("connections") or {}).get("postgres") or {}).get("max_connections")
    db, rd, at = st["db"], st["redis"], st["at_10k"]
    tasks = sum(st["running"]) / 2

    def row(label: str, per: float, extra: str = "") -> list[str]:
        return [label, number(per, 3), number(per * tasks, 0), f"{per * SAMPLE:,.0f}", extra]

    rows = [
        row("DB statements (PgBouncer's count)", db["statements_per_task_s"],
            f"PostgreSQL counted {db['pg_xacts_per_task_s']:.2f} transactions per task-second"),
        row("↳ checkpoints (`task_results` rows written)", db["checkpoint_writes_per_task_s"],
            "one per finished chunk: the actor's own pace"),
        row("↳ the runtime's own (all the others)", db.get("runtime_per_task_s", 0.0),
            "the goal's figure"),
        row("  ↳ heartbeats (transactions writing running rows)",
            db.get("heartbeat_statements_per_task_s", 0.0),
            f"one per worker and beat; {number(db['heartbeat_updates_per_task_s'], 3)} rows "
            f"written per task-second"),
        row("  ↳ the rest (the reaper's loops, all else)", db["other_per_task_s"],
            "fixed per worker and reaper, spread over the running tasks"),
        row("Redis commands", rd["commands_per_task_s"]),
    ]
    rows += [row(f"↳ `{k}`", v) for k, v in rd["by_command_per_task_s"].items() if v >= 0.01]
    busy = at.get("pg_server_connections_busy")
    rows.append(["PostgreSQL server connections busy (Little's law)", "—",
                 "—", number(busy, 0), f"mean server hold per statement {number(db['mean_xact_us'], 0)} "
                                   f"µs (PgBouncer); max_connections here {limit or '?'}"])
    rows.append(["Redis CPU (cores)", "—", number(rd["cpu_s_per_s"], 3),
                 number(at.get("redis_cpu_cores"), 2), "Redis runs commands on one thread"])
    cpu = st.get("cpu_ms_per_s") or {}
    for role, label, note in (
            ("pool", "pool processes", ""), ("postgres", "PostgreSQL backends", ""),
            ("pgbouncer", "PgBouncer", "; one PgBouncer process uses one core at most")):
        if role in cpu and tasks:
            per = cpu[role] / tasks
            rows.append([f"CPU of the {label} (ms)", number(per, 2), number(cpu[role], 0),
                         f"{per * SAMPLE / 1000:,.1f} cores", f"psutil, user + system{note}"])
    return rows


TABLES: tuple[tuple[str, list[str], Any], ...] = (
    (CANCEL, ["measure", "value"], cancel_rows),
    (DELIVERIES, ["channel", "subscribers (NUMSUB)", "receivers per no-op event",
                  "receivers per real cancel", "bytes sent per event",
                  "at 10,000 pool processes"], delivery_rows),
    (CONNECTIONS, ["process", "PostgreSQL (to PgBouncer)", "Redis", "note"], connection_rows),
    (STEADY, ["what", "per task-second", "per second, this run",
              "per second at 10,000 tasks (extrapolated)", "note"], steady_rows),
)


# -- notes for RESULTS.md ------------------------------------------------------------------

def _cancel_note(results: Results) -> str:
    return (
        "Three simulated hosts (a PID and UTS namespace each: own hostname, own pids), one "
        "worker each; every DB connection of the workers, the reaper and the bench's "
        "canceller goes through a private PgBouncer in transaction mode, and the fleet uses "
        "a Redis server of its own (the same binary as the configured one), so that the "
        "counters below are the fleet's alone. The cancel-all is "
        "`Canceller.cancel_all()` in the bench's process, as the API calls it; its Redis "
        "client only records what each PUBLISH answered (how many subscribers got it) and "
        "when the pipeline left. Token observed: the timestamp of each worker's "
        "`task.cancel_observed` line (its own log file per host; same host clock), against "
        "`time.time()` just before the call, and against the moment the event's pipeline "
        "was sent. CPU: psutil's user+system time of every pool process, worker, the reaper, "
        "PgBouncer, Redis and the database's backends, before the call and once the last "
        "line was seen. Every row terminal: the bench's own count of active rows every "
        "20 ms (queued ones are ended by the claims that refuse them and by the reaper's "
        "sweep). Single cancels: `Canceller.cancel()` one at a time on running tasks "
        "spread over the hosts, before the cancel-all.")


def _deliveries_note(results: Results) -> str:
    return (
        "Subscribers: PUBSUB NUMSUB of one running task's channel, of its worker's channel "
        "and of the fleet-wide channel. Receivers: what Redis answered to each PUBLISH, "
        "summed: for a burst of no-op events shaped as a single cancel's (`{\"ids\": [an "
        "unknown task], ...}`: every receiver parses and matches it, none acts), sent once "
        "to running tasks' own channels and their workers' channels and once to the "
        "fleet-wide channel, and for the real cancels of the section. Bytes: Redis's "
        "`total_net_output_bytes` over each burst, less the steady state's rate over the "
        "same time. The last column multiplies this run's figures out to 10,000 pool "
        "processes.")


def _connections_note(results: Results) -> str:
    return (
        "Per process: its established TCP connections to PgBouncer and to Redis (psutil, "
        "outer pids of the simulated hosts). Clients: Redis CLIENT LIST and PgBouncer SHOW "
        "CLIENTS, each connection traced to the process that holds its socket "
        "(`net_connections`); server connections: PgBouncer SHOW SERVERS. Taken with every "
        "task running and past its first beats. The extrapolated row multiplies the "
        "measured connections per pool process and per worker by 10,000 pool processes in "
        "workers of this run's size.")


def _steady_note(results: Results) -> str:
    st = _fleet(results).get("steady") or {}
    return (
        f"A window of {st.get('seconds', 0):.0f} s with every task running. DB statements: "
        "PgBouncer's SHOW STATS (`total_xact_count`; each statement is its own transaction), "
        "split by what the rows say: `task_results` rows written in the window (counted from "
        "their `created_at`: the checkpoints), and the transactions that wrote a running "
        "`tasks` row (the heartbeats: the distinct `xmin` of the running rows, sampled every "
        "200 ms, which a row keeps until its next beat; one node heartbeat writes all its "
        "worker's rows in one transaction). Rows written: `tasks` rows updated "
        "(pg_stat_user_tables; each backend flushes those counters at its own pace, so that "
        "figure is approximate). Redis: "
        "INFO commandstats over the window, the bench's own INFO and CLIENT calls left out; "
        "Redis CPU: INFO cpu. The 10,000-task column multiplies the per-task rates: an "
        "extrapolation, not a measurement; it counts the fixed per-worker and per-reaper "
        "work as if it grew with the tasks, so it overstates a little. Little's law gives "
        "the server connections busy at that rate: statements a second times the mean time "
        "PgBouncer held a server connection for one (its own `SET client_encoding`, then the "
        "prepare and the execute round trips, as asyncpg runs without a statement cache), "
        "which on this loaded machine includes the time a client process waited for a core.")


SECTIONS: tuple[tuple[str, Any], ...] = ((CANCEL, _cancel_note),
                                         (DELIVERIES, _deliveries_note),
                                         (CONNECTIONS, _connections_note),
                                         (STEADY, _steady_note))


def observations(results: Results) -> list[str]:
    f = _fleet(results)
    out = []
    if f.get("skipped"):
        out.append(f"The fleet section was skipped: {f['skipped']}")
    if f.get("error"):
        out.append(f"The fleet section stopped early: {f['error']}")
    left = (f.get("cleanup") or {}).get("left_behind")
    if left:
        out.append("The fleet section could not remove everything: " + "; ".join(left))
    c = f.get("connections") or {}
    at = c.get("at_10k") or {}
    if at:
        pool_redis = c["per_pool_process"]["redis"]
        out.append(
            f"Redis connections grow with the pool processes: each holds "
            f"{pool_redis.get('mean', 0):g} (its sidecar's command client and a subscriber "
            f"connection of its own), each worker's main process "
            f"{c['per_worker_main']['redis'].get('mean', 0):g}. Multiplied out to "
            f"{at['pool_processes']:,} pool processes that is {at['redis_clients']:,} Redis "
            f"clients, {at['redis_subscribers']:,} of them subscribers, against a maxclients "
            f"of {at['redis_maxclients']:,}: the subscriber connections alone would not fit. "
            f"One subscriber per worker (its main process, which subscribes already) passing "
            f"events on to its pool processes would need one per worker instead of one per "
            f"pool process.")
        pg = c["pgbouncer"]
        out.append(
            f"PostgreSQL: one connection per pool process, to PgBouncer "
            f"({pg['clients']} clients in all here), which opened {pg['server_connections']} "
            f"server connections for them; {at['pgbouncer_clients']:,} clients at "
            f"{at['pool_processes']:,} pool processes is within what one PgBouncer accepts "
            f"(max_client_conn and its file descriptors must allow it), and PostgreSQL "
            f"sees only the server connections.")
    db = (f.get("steady") or {}).get("db") or {}
    if db.get("statements"):
        ratio = db["pg_xacts"] / db["statements"]
        text = (f"PostgreSQL counted {ratio:.1f} transactions for each statement PgBouncer "
                f"passed ({db['pg_xacts']:,} against {db['statements']:,} in the window).")
        if ratio >= 1.5:
            text += (" PgBouncer sends `SET client_encoding` ahead of every transaction it "
                     "hands a server connection: asyncpg's startup packet asks for `'utf-8'` "
                     "(quoted), the server reports `UTF8`, and the two never compare equal. "
                     "Each statement then costs PostgreSQL a second transaction and PgBouncer "
                     "a second round trip; asking for `UTF8` (asyncpg's `server_settings`) "
                     "stops it.")
        out.append(text)
    return out
