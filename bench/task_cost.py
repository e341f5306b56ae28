"""11. What one short task costs, next to plain Celery, and how fast the API takes submissions.

On a Redis of the section's own (its `INFO commandstats` is then this run's alone) and a
database of its own, for each publish path (`PUBLISH_MODE=direct`, then `kombu`), our worker
(prefork, 2), reaper and API:

(a) short tasks: `plan.task_cost` one-chunk `distill` tasks (`chunk_seconds` 0) submitted
    over HTTP by `task_cost_clients` concurrent clients, each to `succeeded`: tasks/s from
    the first submission to the last `finished_at`, the median of `task_cost_rounds` rounds;
(b) per task, from the servers: PostgreSQL transactions and row writes of the bench's
    database and Redis commands by name over that window, less what the idle stack does
    in as long (bench/task_cost_counters.py);
(c) submissions alone, closed loop into a queue no worker reads: `POST /api/v1/tasks` from
    `task_cost_clients` clients, `POST /api/v1/tasks:batch` of 100 and of 1,000 tasks from
    `task_cost_batch_clients`; with each one's per-task statements and commands;
(d) RSS of every service process and pool process: idle, and the peak under each load.

Then plain Celery's no-op task the same way (bench/task_cost_celery.py), and last the
instrumented worker and API (bench/task_cost_probe.py, bench/task_cost_api_probe.py) with
the direct path: each step of a delivery and of a submission timed (and a delivery's
statements and commands counted), one task at a time, under the load of (a), and for the
API under the single-submission load of (c).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import task_cost_breakdown, task_cost_celery
from bench.fleet_stack import PrivateRedis, redis_binary
from bench.ours import Ours
from bench.plan import Plan
from bench.poll import until
from bench.procs import Child
from bench.stack import Servers, Stack
from bench.stats import Dist
from bench.task_cost_counters import SETTLE_S, Counters, Window, idle_window
from bench.task_cost_cpu import CpuClock
from bench.task_cost_cpu import per as per_cpu
from bench.task_cost_load import (
    Finished,
    RssSampler,
    median_round,
    outcome,
    service_pids,
    submit_rate,
    submit_short,
)
from shared.broker import make_celery
from tests.support import settings_env

BATCHES = (100, 1000)
MODES = ("direct", "kombu")
NO_EVENTS = "direct_no_events"


async def run(servers: Servers, out_dir: Path, plan: Plan,
              say: Callable[[str], None]) -> dict[str, Any]:
    private = None
    redis_pid: int | None = None
    if redis_binary() is not None:
        private = await asyncio.to_thread(PrivateRedis().start)
        redis_pid = private.proc.pid if private.proc is not None else None
        here = Servers(servers.database_url, private.url, "configured PostgreSQL, private Redis")
    else:
        say("no redis-server binary: Redis counts include whatever else uses the server")
        here = servers
    out: dict[str, Any] = {"redis": "private" if private else "shared", "tasks": plan.task_cost,
                           "clients": plan.task_cost_clients,
                           "batch_clients": plan.task_cost_batch_clients, "ours": {}}
    try:
        for mode in MODES:
            say(f"ours, PUBLISH_MODE={mode}")
            out["ours"][mode] = await _ours(here, out_dir / f"ours-{mode}", plan, mode, say,
                                            redis_pid)
        # What Celery's task events (Flower) cost the short tasks: the same without them.
        say("ours, PUBLISH_MODE=direct, TASK_EVENTS=false: short tasks only")
        out["ours"][NO_EVENTS] = await _ours(here, out_dir / "ours-no-events", plan, "direct",
                                             say, redis_pid, task_events=False, submits=False)
        say("plain Celery, no-op task")
        out["celery"] = await task_cost_celery.run(
            here.redis_url, out_dir / "celery", n=plan.task_cost, clients=plan.task_cost_clients,
            warmup=plan.task_cost_warmup, idle_s=plan.task_cost_idle_s,
            rounds=plan.task_cost_rounds, redis_pid=redis_pid)
        say(f"plain Celery: {out['celery']['tasks_per_s']:.0f} tasks/s")
        say("the instrumented worker: each step of a delivery")
        out["breakdown"] = await _breakdown(here, out_dir / "probe", plan)
    finally:
        if private is not None:
            await asyncio.to_thread(private.stop)
    return out


async def _ours(servers: Servers, out_dir: Path, plan: Plan, mode: str,
                say: Callable[[str], None], redis_pid: int | None, *, task_events: bool = True,
                submits: bool = True) -> dict[str, Any]:
    stack = await Stack.create(servers, out_dir, publish_mode=mode, task_events=task_events)
    try:
        await stack.start_worker()
        await stack.start_reaper()
        await stack.start_api()
        return await _measure(stack, plan, say, redis_pid, submits=submits)
    finally:
        await asyncio.to_thread(stack.stop)
        await stack.destroy()


async def _measure(stack: Stack, plan: Plan, say: Callable[[str], None],
                   redis_pid: int | None, *, submits: bool = True) -> dict[str, Any]:
    n, clients = plan.task_cost, plan.task_cost_clients
    pids = lambda: service_pids(stack.children)  # noqa: E731
    cpu = CpuClock(pids, admin_url=stack.servers.database_url, db_name=stack.db_name,
                   redis_pid=redis_pid)
    counters = await Counters(stack.settings.database_url, stack.settings.redis_url).open()
    finished = await Finished(stack.settings.redis_url, stack.keys.events_channel).start()
    try:
        async with Ours.open(stack) as ours:
            idle_rss = RssSampler(pids).sample()
            warm = await submit_short(ours, plan.task_cost_warmup, clients)
            await finished.wait(set(warm["ids"]), 60)
            await asyncio.sleep(SETTLE_S)  # the warm-up's counts land before the idle window
            idle = await idle_window(counters, plan.task_cost_idle_s)
            before = await counters.snapshot()
            await cpu.start()
            rounds = []
            with RssSampler(pids) as short_rss:
                for _ in range(plan.task_cost_rounds):
                    sent = await submit_short(ours, n, clients)
                    await finished.wait(set(sent["ids"]), 120)
                    rounds.append(sent)
            short_cpu = cpu.stop()
            after = await counters.settled()
            ran = []
            for sent in rounds:
                one = await outcome(ours, sent["ids"], sent["t0"])
                one.update(submit_s=sent["submitted_s"], submit_latency_ms=sent["latency"])
                ran.append(one)
            done = n * len(rounds)
            short = {**median_round(ran), "rounds": ran,
                     "per_task": Window.between(before, after).per(done, idle),
                     "cpu_ms_per_task": per_cpu(short_cpu, done)}
            say(f"{short['tasks_per_s']:.0f} tasks/s, the median of "
                + ", ".join(f"{r['tasks_per_s']:.0f}" for r in ran))
            rates: dict[str, Any] = {}
            with RssSampler(pids) as submit_rss:
                for size in (1, *BATCHES) if submits else ():
                    label = "single" if size == 1 else f"batch_{size}"
                    b = await counters.snapshot()
                    await cpu.start()
                    rate = await submit_rate(
                        ours, size, seconds=plan.task_cost_submit_s,
                        clients=clients if size == 1 else plan.task_cost_batch_clients)
                    used = cpu.stop()
                    a = await counters.settled()
                    made = rate["statuses"].get("202", 0) * size
                    rate["per_task"] = Window.between(b, a).per(max(made, 1), idle)
                    rate["cpu_ms_per_task"] = per_cpu(used, made)
                    rates[label] = rate
                    say(f"submit {label}: {rate['requests_per_s']:.0f} req/s, "
                        f"{rate['tasks_per_s']:.0f} tasks/s")
            return {"short_tasks": short, "submit": rates, "idle": idle.to_json(),
                    "rss_mib": {"idle": idle_rss, "short_tasks_peak": short_rss.peak,
                                "submit_peak": submit_rss.peak},
                    "worker_concurrency": stack.settings.worker_concurrency}
    finally:
        await finished.close()
        await counters.close()


# -- the instrumented worker --------------------------------------------------------------------

async def _start_probe_worker(stack: Stack, probe_dir: Path) -> None:
    env = {**settings_env(stack.settings), "TASK_COST_PROBE_DIR": str(probe_dir)}
    child = Child("worker", "bench.task_cost_probe", ["-n", stack.node], env,
                  stack.out_dir / "worker.out")
    stack.children["worker"] = child.start()
    celery = make_celery(stack.settings)
    try:
        async def ready() -> bool:
            child.check()
            replies = await asyncio.to_thread(celery.control.ping, destination=[stack.node],
                                              timeout=0.5)
            return bool(replies) and len(child.live_children()) >= \
                stack.settings.worker_concurrency

        await until(ready, 60, "instrumented worker ready")
    finally:
        celery.close()


async def _start_probe_api(stack: Stack, probe_dir: Path) -> None:
    env = {**settings_env(stack.settings), "TASK_COST_PROBE_DIR": str(probe_dir)}
    child = Child("api", "bench.task_cost_api_probe", [], env, stack.out_dir / "api.out")
    stack.children["api"] = child.start()
    async with aiohttp.ClientSession() as http:
        async def ready() -> bool:
            child.check()
            try:
                async with http.get(f"{stack.base_url}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, 30, "instrumented API ready")


async def _api_samples(probe_dir: Path) -> dict[str, list[float]]:
    await asyncio.sleep(0.6)  # the probe writes its samples every half second
    path = probe_dir / "api.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _since(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, Any]:
    out = {}
    for step, values in after.items():
        d = Dist(values[len(before.get(step, [])):])
        if d.n:
            out[step] = d.to_json(with_samples=False)
    return out


async def _breakdown(servers: Servers, out_dir: Path, plan: Plan) -> dict[str, Any]:
    """The instrumented worker and API: a delivery's steps and a submission's."""
    probe_dir = out_dir / "lines"
    stack = await Stack.create(servers, out_dir, publish_mode="direct")
    api: dict[str, Any] = {}
    try:
        await _start_probe_worker(stack, probe_dir)
        await stack.start_reaper()
        await _start_probe_api(stack, probe_dir)
        finished = await Finished(stack.settings.redis_url, stack.keys.events_channel).start()
        try:
            async with Ours.open(stack) as ours:
                warm = await submit_short(ours, plan.task_cost_warmup, plan.task_cost_clients)
                await finished.wait(set(warm["ids"]), 60)
                mark = await _api_samples(probe_dir)
                alone: set[str] = set()
                for _ in range(plan.task_cost_alone):
                    one = await submit_short(ours, 1, 1)
                    await finished.wait(set(one["ids"]), 30)
                    alone.update(one["ids"])
                after_alone = await _api_samples(probe_dir)
                sent = await submit_short(ours, plan.task_cost, plan.task_cost_clients)
                await finished.wait(set(sent["ids"]), 120)
                after_load = await _api_samples(probe_dir)
                await submit_rate(ours, 1, clients=plan.task_cost_clients,
                                  seconds=plan.task_cost_submit_s)
                after_submits = await _api_samples(probe_dir)
                api = {"alone": _since(mark, after_alone),
                       "short_tasks": _since(after_alone, after_load),
                       "submit_load": _since(after_load, after_submits)}
        finally:
            await finished.close()
        loaded = set(sent["ids"])
        await asyncio.sleep(0.5)  # a delivery's line is written after its end event
        lines = task_cost_breakdown.read(probe_dir)
        return {
            "alone": task_cost_breakdown.summarize([d for d in lines if d["task_id"] in alone]),
            "under_load": task_cost_breakdown.summarize(
                [d for d in lines if d["task_id"] in loaded]),
            "api": api,
        }
    finally:
        await asyncio.to_thread(stack.stop)
        await stack.destroy()
