"""Cancels across the fleet: who receives one, what it costs Redis, and how long until every
pool process has seen a cancel-all (steps 3 to 5 of the section, see `bench/fleet.py`).

Receivers are Redis's own answer: PUBLISH returns how many subscribers it delivered the
message to. The canceller is the product's (`shared.cancellation.Canceller`) in this
process; its Redis client is wrapped only to keep those answers and the time the announce
left, which it otherwise drops.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.fleet_counters import BackendWatch, Counters, CpuUse, delta, pools
from bench.fleet_stack import Fleet
from bench.logtail import LogTail
from bench.poll import until
from bench.stats import Dist
from shared.cancellation import Canceller
from shared.keys import Keys

_ACTIVE = "status IN ('queued', 'running', 'cancelling')"


class Published:
    """A Redis client that remembers, for each pipeline it ran, every PUBLISH with its
    channel and receiver count, and when the pipeline was sent and answered."""

    def __init__(self, inner: aioredis.Redis) -> None:
        self._inner = inner
        self.sent: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self._inner.pipeline(*args, **kwargs)
        execute = pipe.execute

        async def counted(*a: Any, **k: Any) -> Any:
            commands = [c[0] for c in pipe.command_stack]
            started = time.time()
            results = await execute(*a, **k)
            entry = {"sent_at": started, "answered_at": time.time(), "publishes": []}
            for args, result in zip(commands, results, strict=False):
                if str(args[0]).upper() == "PUBLISH":
                    channel = args[1].decode() if isinstance(args[1], bytes) else str(args[1])
                    entry["publishes"].append({"channel": channel, "receivers": int(result),
                                               "bytes": len(args[2])})
            if entry["publishes"]:
                self.sent.append(entry)
            return results

        pipe.execute = counted
        return pipe


def channel_kind(keys: Keys, channel: str) -> str:
    if channel == keys.cancel_channel:
        return "fleet"
    if channel.startswith(keys.task_cancel_channel("")):
        return "task"
    if channel.startswith(keys.node_cancel_channel("")):
        return "node"
    return "other"


class Observed:
    """`task.cancel_observed` lines from every host's worker log (`<host>/celery_worker.log`);
    each record found gets its host's name."""

    def __init__(self, paths: list[Path]) -> None:
        self.tails = [(p.parent.name, LogTail(p)) for p in paths]

    def find(self, task_id: str) -> dict[str, Any] | None:
        for host, tail in self.tails:
            if (record := tail.find("task.cancel_observed", task_id)) is not None:
                record.setdefault("host", host)
                return record
        return None

    async def wait(self, task_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        seen: dict[str, dict[str, Any]] = {}
        while True:
            for tid in task_ids:
                if tid not in seen and (record := self.find(tid)) is not None:
                    seen[tid] = record
            if len(seen) == len(task_ids) or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.02)


async def numsub(redis: aioredis.Redis, keys: Keys, task_id: str, node: str) -> dict[str, int]:
    """Subscribers of the channels a single cancel uses, and of the fleet-wide one."""
    channels = {"task": keys.task_cancel_channel(task_id), "node": keys.node_cancel_channel(node),
                "fleet": keys.cancel_channel}
    found = dict(await redis.pubsub_numsub(*channels.values()))
    return {kind: int(found.get(ch.encode(), found.get(ch, 0))) for kind, ch in channels.items()}


def _noop_event() -> str:
    """Shaped as a single cancel's event, for a task no process runs: every receiver parses
    and matches it, none acts on it (a guardian only looks at the DB once more)."""
    return json.dumps({"ids": [str(uuid.uuid4())], "force": False, "reason": "bench-noop"})


async def burst(redis: aioredis.Redis, targets: list[tuple[str, ...]], baseline_out_per_s: float
                ) -> dict[str, Any]:
    """PUBLISHes one no-op event to each tuple of channels (one pipeline), and returns what
    Redis delivered: receivers summed from its replies, bytes it sent to clients meanwhile
    (less the steady state's rate over the same time)."""
    stats = await redis.info("stats")
    before, started = int(stats["total_net_output_bytes"]), time.perf_counter()
    async with redis.pipeline(transaction=False) as pipe:
        for channels in targets:
            payload = _noop_event()
            for channel in channels:
                pipe.publish(channel, payload)
        replies = await pipe.execute()
    await asyncio.sleep(0.5)  # the sockets drain
    stats = await redis.info("stats")
    took = time.perf_counter() - started
    sent = int(stats["total_net_output_bytes"]) - before - baseline_out_per_s * took
    receivers = sum(int(r) for r in replies)
    return {"events": len(targets), "publishes": len(replies), "deliveries": receivers,
            "per_event": round(receivers / max(len(targets), 1), 2),
            "net_output_bytes": round(sent), "window_s": round(took, 3),
            "bytes_per_event": round(sent / max(len(targets), 1))}


def latencies(t0: float, published_at: float | None, records: dict[str, dict[str, Any]]
              ) -> dict[str, Any]:
    """Call -> observed and event sent -> observed, per task, as distributions (ms)."""
    from_call, from_event = Dist(), Dist()
    by_host: dict[str, Dist] = {}
    via: dict[str, int] = {}
    for record in records.values():
        from_call.add((record["epoch"] - t0) * 1000)
        if published_at is not None:
            from_event.add((record["epoch"] - published_at) * 1000)
            by_host.setdefault(str(record.get("host")), Dist()).add(
                (record["epoch"] - published_at) * 1000)
        key = str(record.get("via"))
        via[key] = via.get(key, 0) + 1
    return {"from_call_ms": from_call.to_json(), "from_event_ms": from_event.to_json(),
            # Hosts by name, which is the order they started in.
            "from_event_by_host_ms": {h: d.to_json(with_samples=False)
                                      for h, d in sorted(by_host.items())},
            "via": via}


# -- 3. deliveries -------------------------------------------------------------------------

async def _running_rows(pool: Any) -> list[Any]:
    return list(await pool.fetch(
        "SELECT id, worker FROM tasks WHERE status = 'running' ORDER BY worker, id"))


async def deliveries(fleet: Fleet, pool: Any, redis: aioredis.Redis, events: int,
                     out_per_s: float) -> dict[str, Any]:
    rows = await _running_rows(pool)
    if not rows:
        return {"error": "no running task"}
    keys = fleet.keys
    first = rows[0]
    pairs = [(keys.task_cancel_channel(str(r["id"])), keys.node_cancel_channel(r["worker"]))
             for r in (rows * (events // len(rows) + 1))[:events]]
    single = await burst(redis, pairs, out_per_s)
    await asyncio.sleep(1.0)
    fleetwide = await burst(redis, [(keys.cancel_channel,)] * events, out_per_s)
    return {"numsub": await numsub(redis, keys, str(first["id"]), first["worker"]),
            "pool_processes": len(fleet.pool_pids()), "hosts": len(fleet.hosts),
            "running": len(rows), "task_channels": await task_channels(redis, keys),
            "single_cancel_channels": single, "fleet_channel": fleetwide}


async def _channels_settle(redis: Any, keys: Keys, within: float = 2.0) -> int:
    """Task channels still subscribed after up to `within` seconds (0 as soon as none)."""
    deadline = time.monotonic() + within
    while True:
        left = await task_channels(redis, keys)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


async def task_channels(redis: aioredis.Redis, keys: Keys) -> int:
    """Task cancel channels with at least one subscriber (PUBSUB CHANNELS)."""
    return len(await redis.pubsub_channels(keys.task_cancel_channel("*")))


# -- 4. single cancels ---------------------------------------------------------------------

async def singles(fleet: Fleet, pool: Any, canceller: Canceller, count: int
                  ) -> dict[str, Any]:
    rows = await _running_rows(pool)
    # Spread over the hosts: every third row of the list ordered by worker.
    chosen = rows[:: max(1, len(rows) // max(count, 1))][:count]
    observed = Observed(fleet.log_files())
    published: Published = canceller.redis  # type: ignore[assignment]
    took, receivers = Dist(), {"task": [], "node": [], "fleet": []}
    missing = 0
    for row in chosen:
        published.sent.clear()
        t0 = time.time()
        await canceller.cancel(row["id"], by="bench-fleet", reason="bench")
        seen = await observed.wait([str(row["id"])], timeout=10.0)
        if seen:
            took.add((seen[str(row["id"])]["epoch"] - t0) * 1000)
        else:
            missing += 1
        for entry in published.sent:
            for p in entry["publishes"]:
                receivers.setdefault(channel_kind(fleet.keys, p["channel"]), []).append(
                    p["receivers"])
    ids = [r["id"] for r in chosen]

    async def ended() -> bool:
        return not await pool.fetchval(
            f"SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[]) AND {_ACTIVE}", ids)

    await until(ended, 30, "single-cancelled tasks terminal", interval=0.05)
    return {"cancels": len(chosen), "observed_ms": took.to_json(), "not_observed": missing,
            "receivers": {k: v for k, v in receivers.items() if v},
            "receivers_per_cancel": round(sum(sum(v) for v in receivers.values())
                                          / max(len(chosen), 1), 2)}


# -- 5. cancel-all -------------------------------------------------------------------------

async def cancel_all(fleet: Fleet, pool: Any, canceller: Canceller, counters: Counters
                     ) -> dict[str, Any]:
    running = [str(r["id"]) for r in await _running_rows(pool)]
    queued = int(await pool.fetchval("SELECT count(*) FROM tasks WHERE status = 'queued'"))
    observed = Observed(fleet.log_files())
    observed.find(str(uuid.uuid4()))  # reads what the logs hold so far
    published: Published = canceller.redis  # type: ignore[assignment]
    published.sent.clear()
    before = await counters.snapshot()
    cpu = CpuUse(fleet, await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
    load = os.getloadavg()[0]
    watch = BackendWatch(pool).start()
    cpu.begin()
    t0, p0 = time.time(), time.perf_counter()
    answer = await canceller.cancel_all(by="bench-fleet", reason="bench")
    answered_ms = (time.perf_counter() - p0) * 1000
    fleet_pub = next((e for e in published.sent if any(
        channel_kind(fleet.keys, p["channel"]) == "fleet" for p in e["publishes"])), None)
    records = await observed.wait(running, timeout=10.0)
    cpu_used = cpu.end()
    limit = fleet.s.cancel_grace + 30.0
    all_terminal_ms = None
    while time.perf_counter() - p0 < limit:
        if not await pool.fetchval(f"SELECT count(*) FROM tasks WHERE {_ACTIVE}"):
            all_terminal_ms = round((time.perf_counter() - p0) * 1000, 1)
            break
        await asyncio.sleep(0.02)
    peak_backends = await watch.stop()
    after = await counters.snapshot()
    d = delta(before, after)
    last_finished = await pool.fetchval(
        "SELECT extract(epoch FROM max(finished_at))::float8 FROM tasks WHERE id = ANY($1::uuid[])",
        [uuid.UUID(t) for t in running])
    ends = await pool.fetch("SELECT status, outcome, count(*) AS n FROM tasks "
                            "GROUP BY status, outcome ORDER BY n DESC")
    published_at = fleet_pub["sent_at"] if fleet_pub else None
    lat = latencies(t0, published_at, records)
    times = sorted(r["epoch"] for r in records.values())
    return {
        "via": "shared.cancellation.Canceller.cancel_all in-process (through PgBouncer)",
        "running": len(running), "queued": queued, "observed": len(records),
        "not_observed": len(running) - len(records),
        "answered_ms": round(answered_ms, 1), "server_took_ms": round(answer.took_ms, 1),
        "event_sent_ms": round((fleet_pub["sent_at"] - t0) * 1000, 1) if fleet_pub else None,
        "event_answered_ms": round((published_at - t0) * 1000, 1) if published_at else None,
        "event_receivers": (fleet_pub["publishes"][0]["receivers"] if fleet_pub else None),
        "event_bytes": (fleet_pub["publishes"][0]["bytes"] if fleet_pub else None),
        "latency": lat,
        "observed_spread_ms": round((times[-1] - times[0]) * 1000, 1) if times else None,
        "all_terminal_ms": all_terminal_ms,
        "running_finished_ms": (round((last_finished - t0) * 1000, 1)
                                if last_finished is not None else None),
        "grace_s": fleet.s.cancel_grace,
        "ends": [{"status": r["status"], "outcome": r["outcome"], "n": r["n"]} for r in ends],
        "answer": {"cancelled": answer.cancelled, "cancelling": len(answer.cancelling),
                   "fence_id": answer.fence_id},
        "peak_pg_backends": peak_backends,
        # Every process stops listening on its task's channel once the task ended.
        "task_channels_left": await _channels_settle(canceller.redis, fleet.keys),
        "load_average_1m": round(load, 2),
        "cpu_until_observed": cpu_used,
        "pgbouncer_after": await pools(fleet),
        "pgbouncer_client_wait_ms": round(d["bouncer"].get("total_wait_time", 0) / 1000, 1),
        "db_statements": d["bouncer"].get("total_xact_count"),
        "redis_commands": d["redis"]["commands"],
    }
