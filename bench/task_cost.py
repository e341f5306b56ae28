"""11. What one short task costs, next to plain Celery, and how fast the API takes submissions.

On a Redis of the section's own (its `INFO commandstats` is then this run's alone) and a
database of its own for each of our stacks, the contenders all up at once: our worker
(prefork, 2), reaper and API with `PUBLISH_MODE=direct`, with `kombu`, and with `direct`
and `TASK_EVENTS=false`; and plain Celery's worker (bench/task_cost_celery.py).

(a) short tasks: `plan.task_cost` one-chunk `distill` tasks (`chunk_seconds` 0) submitted
    over HTTP by `task_cost_clients` concurrent clients, each to `succeeded`: tasks/s from
    the first submission to the last `finished_at`. The contenders take turns, round by
    round (`task_cost_rounds`), so that a busier minute on the machine lands on all alike;
    the median round is reported;
(b) per task, from the servers: PostgreSQL transactions and row writes of each stack's
    database over all rounds, and Redis commands by name over the contender's own rounds,
    less what everything idle does in as long (bench/task_cost_counters.py); CPU time of
    every process over its rounds (bench/task_cost_cpu.py);
(c) submissions alone, closed loop into a queue no worker reads, for each publish path:
    `POST /api/v1/tasks` from `task_cost_clients` clients, `POST /api/v1/tasks:batch` of 100
    and of 1,000 tasks from `task_cost_batch_clients`; each with its per-task counts;
(d) RSS of every service process and pool process: idle, and the peak under each load.

Last, the instrumented worker and API (bench/task_cost_probe.py,
bench/task_cost_api_probe.py) with the direct path: each step of a delivery and of a
submission timed (and a delivery's statements and commands counted), one task at a time,
under the load of (a), and for the API under the single-submission load of (c).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import task_cost_breakdown
from bench.fleet_stack import PrivateRedis, redis_binary
from bench.ours import Ours
from bench.plan import Plan
from bench.poll import until
from bench.procs import Child
from bench.stack import Servers, Stack
from bench.stats import Dist
from bench.task_cost_celery import CeleryRun
from bench.task_cost_counters import EMPTY, SETTLE_S, Counters, Window, with_redis
from bench.task_cost_cpu import CpuClock
from bench.task_cost_cpu import per as per_cpu
from bench.task_cost_load import (
    Finished,
    RssSampler,
    median_round,
    submit_rate,
    submit_short,
)
from bench.task_cost_runs import OursRun
from shared.broker import make_celery
from tests.support import settings_env

MODES = ("direct", "kombu")
NO_EVENTS = "direct_no_events"
Contender = OursRun | CeleryRun


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
                           "clients": plan.task_cost_clients, "rounds": plan.task_cost_rounds,
                           "batch_clients": plan.task_cost_batch_clients, "ours": {}}
    ours = [OursRun(mode, here, out_dir / f"ours-{mode}", plan, mode=mode, redis_pid=redis_pid)
            for mode in MODES]
    # What Celery's task events (Flower) cost the short tasks: the same without them.
    ours.append(OursRun(NO_EVENTS, here, out_dir / "ours-no-events", plan, mode="direct",
                        task_events=False, redis_pid=redis_pid))
    celery = CeleryRun(here.redis_url, out_dir / "celery", n=plan.task_cost,
                       clients=plan.task_cost_clients, warmup=plan.task_cost_warmup)
    try:
        async with contextlib.AsyncExitStack() as running:
            for contender in (*ours, celery):
                say(f"starting {contender.key}")
                running.push_async_callback(contender.stop)
                await contender.start()
            await _contest(ours, celery, out, plan, say, redis_pid)
        say("the instrumented worker and API: each step of a delivery and of a submission")
        out["breakdown"] = await _breakdown(here, out_dir / "probe", plan)
    finally:
        if private is not None:
            await asyncio.to_thread(private.stop)
    return out


async def _contest(ours: list[OursRun], celery: CeleryRun, out: dict[str, Any], plan: Plan,
                   say: Callable[[str], None], redis_pid: int | None) -> None:
    contenders: list[Contender] = [*ours, celery]
    redis = await Counters(None, ours[0].stack.settings.redis_url).open()
    try:
        idle_rss = {c.key: RssSampler(c.pids).sample() for c in contenders}
        for c in contenders:
            await c.warm()
        await asyncio.sleep(SETTLE_S)  # the warm-ups' counts land before the idle window
        # Everything idle: each database's own rate, and the one Redis server's.
        first = [await o.counters.snapshot() for o in ours]
        quiet = await redis.snapshot()
        await asyncio.sleep(plan.task_cost_idle_s)
        idle = {o.key: Window.between(a, await o.counters.snapshot())
                for o, a in zip(ours, first, strict=True)}
        idle_redis = Window.between(quiet, await redis.snapshot())
        before = {o.key: await o.counters.snapshot() for o in ours}
        spent = {c.key: EMPTY for c in contenders}
        cpu: dict[str, dict[str, float]] = {c.key: {} for c in contenders}
        peaks: dict[str, dict[str, float]] = {c.key: {} for c in contenders}
        for r in range(plan.task_cost_rounds):
            for c in contenders:
                clock = c.cpu() if isinstance(c, OursRun) else CpuClock(c.pids,
                                                                         redis_pid=redis_pid)
                a = await redis.snapshot()
                await clock.start()
                with RssSampler(c.pids) as rss:
                    await c.round()
                used = clock.stop()
                spent[c.key] = spent[c.key].plus(Window.between(a, await redis.snapshot()))
                cpu[c.key] = {k: cpu[c.key].get(k, 0.0) + v for k, v in used.items()}
                peaks[c.key] = {k: max(v, peaks[c.key].get(k, 0.0)) for k, v in rss.peak.items()}
            say(f"round {r + 1}: done")
        after = {o.key: await o.counters.settled() for o in ours}
        done = plan.task_cost * plan.task_cost_rounds
        for o in ours:
            ran = await o.outcomes()
            pg = Window.between(before[o.key], after[o.key]).per(done, idle[o.key])
            out["ours"][o.key] = {
                "short_tasks": {**median_round(ran), "rounds": ran,
                                "per_task": with_redis(pg, spent[o.key].per(done, idle_redis)),
                                "cpu_ms_per_task": per_cpu(cpu[o.key], done)},
                "idle": idle[o.key].to_json(),
                "rss_mib": {"idle": idle_rss[o.key], "short_tasks_peak": peaks[o.key]},
                "worker_concurrency": o.stack.settings.worker_concurrency}
            say(f"{o.key}: " + " / ".join(f"{x['tasks_per_s']:.0f}" for x in ran) + " tasks/s")
        out["celery"] = {**median_round(celery.ran), "rounds": celery.ran,
                         "clients": plan.task_cost_clients,
                         "per_task": spent["celery"].per(done, idle_redis),
                         "idle": idle_redis.to_json(),
                         "cpu_ms_per_task": per_cpu(cpu["celery"], done),
                         "rss_mib": {"idle": idle_rss["celery"], "under_load_peak": peaks["celery"]},
                         "concurrency": celery.worker.concurrency}
        say("celery: " + " / ".join(f"{x['tasks_per_s']:.0f}" for x in celery.ran) + " tasks/s")
        for o in ours:
            if o.key in MODES:
                rates, peak = await o.submits(idle[o.key], say)
                mine = out["ours"][o.key]
                mine["submit"] = rates
                mine["rss_mib"]["submit_peak"] = peak
    finally:
        await redis.close()


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
