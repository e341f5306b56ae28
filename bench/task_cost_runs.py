"""One of our stacks in the per-task cost section: started, warmed up, asked for rounds of
short tasks between the other contenders' rounds, then for submission loads, then removed.

Every contender (our stacks and plain Celery, bench/task_cost_celery.py) is up at once and
they take turns, round by round, so that a minute when the machine is busier with
something else lands on all of them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from bench.ours import Ours
from bench.plan import Plan
from bench.stack import Servers, Stack
from bench.task_cost_counters import Counters, Window
from bench.task_cost_cpu import CpuClock
from bench.task_cost_cpu import per as per_cpu
from bench.task_cost_load import (
    Finished,
    RssSampler,
    outcome,
    service_pids,
    submit_rate,
    submit_short,
)

BATCHES = (100, 1000)


class OursRun:
    """Our worker (prefork, 2), reaper and API with one PUBLISH_MODE and TASK_EVENTS."""

    def __init__(self, key: str, servers: Servers, out_dir: Path, plan: Plan, *, mode: str,
                 task_events: bool = True, redis_pid: int | None = None) -> None:
        self.key = key
        self.mode = mode
        self.task_events = task_events
        self._servers = servers
        self._out_dir = out_dir
        self._plan = plan
        self._redis_pid = redis_pid
        self._exit = contextlib.AsyncExitStack()
        self.stack: Stack
        self.ours: Ours
        self.finished: Finished
        self.counters: Counters
        self.sent: list[dict[str, Any]] = []

    def pids(self) -> dict[str, int]:
        return service_pids(self.stack.children)

    def cpu(self) -> CpuClock:
        return CpuClock(self.pids, admin_url=self.stack.servers.database_url,
                        db_name=self.stack.db_name, redis_pid=self._redis_pid)

    async def start(self) -> None:
        self.stack = await Stack.create(self._servers, self._out_dir, publish_mode=self.mode,
                                        task_events=self.task_events)
        self._exit.push_async_callback(self.stack.destroy)
        self._exit.push_async_callback(asyncio.to_thread, self.stack.stop)
        await self.stack.start_worker()
        await self.stack.start_reaper()
        await self.stack.start_api()
        s = self.stack.settings
        self.counters = await Counters(s.database_url, s.redis_url).open()
        self._exit.push_async_callback(self.counters.close)
        self.finished = await Finished(s.redis_url, self.stack.keys.events_channel).start()
        self._exit.push_async_callback(self.finished.close)
        self.ours = await self._exit.enter_async_context(Ours.open(self.stack))

    async def stop(self) -> None:
        await self._exit.aclose()

    async def warm(self) -> None:
        sent = await submit_short(self.ours, self._plan.task_cost_warmup,
                                  self._plan.task_cost_clients)
        await self.finished.wait(set(sent["ids"]), 60)

    async def round(self) -> None:
        """One round of short tasks, each waited for through its end event; its rows are
        read once the counters are (`outcomes`)."""
        sent = await submit_short(self.ours, self._plan.task_cost, self._plan.task_cost_clients)
        await self.finished.wait(set(sent["ids"]), 120)
        self.sent.append(sent)

    async def outcomes(self) -> list[dict[str, Any]]:
        ran = []
        for sent in self.sent:
            one = await outcome(self.ours, sent["ids"], sent["t0"])
            one.update(submit_s=sent["submitted_s"], submit_latency_ms=sent["latency"])
            ran.append(one)
        return ran

    async def submits(self, idle: Window, say: Any) -> tuple[dict[str, Any], dict[str, float]]:
        """Closed-loop submissions, single and batched; the memory peak meanwhile."""
        plan, rates = self._plan, {}
        cpu = self.cpu()
        with RssSampler(self.pids) as rss:
            for size in (1, *BATCHES):
                label = "single" if size == 1 else f"batch_{size}"
                before = await self.counters.snapshot()
                await cpu.start()
                rate = await submit_rate(
                    self.ours, size, seconds=plan.task_cost_submit_s,
                    clients=plan.task_cost_clients if size == 1 else plan.task_cost_batch_clients)
                used = cpu.stop()
                after = await self.counters.settled()
                made = rate["statuses"].get("202", 0) * size
                rate["per_task"] = Window.between(before, after).per(max(made, 1), idle)
                rate["cpu_ms_per_task"] = per_cpu(used, made)
                rates[label] = rate
                say(f"{self.key}: submit {label}: {rate['requests_per_s']:.0f} req/s, "
                    f"{rate['tasks_per_s']:.0f} tasks/s")
        return rates, rss.peak
