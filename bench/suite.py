"""Runs the measurements in order, each against what it needs, and gathers their data."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from bench import (
    api_load,
    cancel_all,
    cancel_cooperative,
    cancel_uncooperative,
    celery_abort,
    celery_terminate,
    check_cost,
    drain,
    fleet,
    machine,
    reconcile,
    round_trips,
    scale,
    simulated,
    task_cost,
    trees,
)
from bench.logtail import count
from bench.ours import Ours
from bench.plain_worker import PlainWorker
from bench.plan import Plan
from bench.procs import ROOT
from bench.stack import Servers, Stack, delete_prefix

SECTIONS = ("round_trips", "check", "cooperative", "uncooperative", "cancel_all", "api", "celery",
            "drain", "reconcile", "fleet", "simulated", "trees", "task_cost", "scale")
# Short, so uncooperative rounds take seconds, not minutes; reported with every figure.
CANCEL_GRACE = 1.0
T = TypeVar("T")


class Suite:
    def __init__(self, plan: Plan, out_dir: Path, sections: tuple[str, ...], console: Console,
                 seed: int = 20261129) -> None:
        self.plan = plan
        self.out_dir = out_dir
        self.sections = sections
        self.console = console
        self.rng = random.Random(seed)
        self.seed = seed
        self.data: dict[str, Any] = {}
        self.phases: dict[str, float] = {}

    async def _phase(self, name: str, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        self.console.print(f"[bold cyan]▶[/] {what}")
        started = time.perf_counter()
        result = await fn()
        took = time.perf_counter() - started
        self.phases[name] = round(took, 1)
        self.console.print(f"  [dim]done in {took:.1f}s[/]")
        return result

    def _say(self, line: str) -> None:
        self.console.print(f"  {line}", style="dim", markup=False)

    def wants(self, *names: str) -> bool:
        return any(n in self.sections for n in names)

    async def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        begun = datetime.now(UTC)
        load: list[float] = []
        sampler = asyncio.create_task(_sample_load(load))
        servers = await asyncio.to_thread(Servers.open)
        try:
            meta_machine = await machine.describe(servers.database_url, servers.redis_url)
            if self.wants("round_trips"):
                self.data["round_trips"] = await self._phase(
                    "round_trips", "0. round trips, and the cancel call without HTTP",
                    lambda: round_trips.run(servers, self.plan.round_trips))
            if self.wants("check"):
                self.data["check_token"] = await self._phase(
                    "check_token", "2. cost of one cancel-token check",
                    lambda: asyncio.to_thread(check_cost.token, self.plan.token_checks))
            stack_settings: dict[str, Any] = {}
            if self.wants("cooperative", "uncooperative", "cancel_all", "api", "check"):
                stack_settings = await self._ours(servers)
            if self.wants("celery", "check"):
                await self._celery(servers)
            if self.wants("drain"):
                self.data["drain"] = await self._phase(
                    "drain", "9. SIGTERM to a busy worker: ours (drain) vs Celery's soft shutdown",
                    lambda: drain.run(servers, self.out_dir / "drain", say=self._say,
                                      rounds=1 if self.plan.name == "quick" else drain.ROUNDS))
            if self.wants("reconcile"):
                self.data["reconcile"] = await self._phase(
                    "reconcile", "4. reconcile pass vs history size (in-process)",
                    lambda: reconcile.run(servers, list(self.plan.reconcile_sizes),
                                          active=self.plan.reconcile_active,
                                          passes=self.plan.reconcile_passes))
            if self.wants("fleet"):
                sizes = self.plan.fleet_concurrency
                self.data["fleet"] = await self._phase(
                    "fleet", f"7. a fleet of {sum(sizes)} pool processes on {len(sizes)} "
                             f"simulated hosts behind PgBouncer: connections, steady state, "
                             f"cancel deliveries, cancel-all",
                    lambda: fleet.run(servers, self.out_dir / "fleet", self.plan,
                                      cancel_grace=CANCEL_GRACE, say=self._say))
            if self.wants("simulated"):
                sizes = ", ".join(f"{n:,}" for n in self.plan.simulated)
                self.data["simulated"] = await self._phase(
                    "simulated", f"8. steady state with {sizes} simulated executions behind "
                                 f"PgBouncer: DB statements and Redis commands per task-second",
                    lambda: simulated.run(servers, self.plan, say=self._say))
            if self.wants("trees"):
                plan = self.plan
                self.data["trees"] = await self._phase(
                    "trees", f"10. cancel a tree of 1 root + {plan.trees_children:,} children, "
                             f"{sum(plan.trees_concurrency)} running: ours through the API, "
                             f"then Celery's group and chord revoke",
                    lambda: trees.run(servers, self.out_dir / "trees", plan,
                                      cancel_grace=CANCEL_GRACE, say=self._say))
            if self.wants("task_cost"):
                self.data["task_cost"] = await self._phase(
                    "task_cost", f"11. {self.plan.task_cost} short tasks, ours (both publish "
                                 f"paths) vs plain Celery; per-task cost; submit rates; RSS",
                    lambda: task_cost.run(servers, self.out_dir / "task_cost", self.plan,
                                          say=self._say))
            if self.wants("scale"):
                self.data["scale"] = await self._phase(
                    "scale", f"6. {self.plan.scale:,} queued tasks: load, reaper passes, "
                             f"cancel-all",
                    lambda: scale.run(servers, self.out_dir / "scale", self.plan,
                                      cancel_grace=CANCEL_GRACE,
                                      say=lambda line: self.console.print(f"  {line}", style="dim",
                                                                         markup=False)))
        finally:
            sampler.cancel()
            await asyncio.to_thread(servers.close)
        return {
            "meta": {
                "plan": self.plan.name, "sections": list(self.sections), "seed": self.seed,
                "started_at": begun.isoformat(timespec="seconds"),
                "took_s": round(time.perf_counter() - started, 1), "phases_s": self.phases,
                "machine": meta_machine, "servers": servers.kind, "settings": stack_settings,
                "code": machine.code_version(ROOT),
                # The 1-minute load average every 5 s: how busy the machine was throughout.
                "load_average": {"samples": load, "max": max(load, default=None),
                                 "mean": round(sum(load) / len(load), 2) if load else None},
            },
            **self.data,
        }

    async def _ours(self, servers: Servers) -> dict[str, Any]:
        plan = self.plan
        stack = await Stack.create(servers, self.out_dir / "ours", cancel_grace=CANCEL_GRACE)
        try:
            await self._phase("start_ours", "starting our worker (prefork, 2), reaper and API",
                              lambda: _start(stack))
            s = stack.settings
            listeners = {"expected": s.worker_concurrency + int(getattr(s, "guardian", False)),
                         "at_start": await stack.cancel_listeners()}
            await asyncio.sleep(2.0)
            listeners["two_seconds_later"] = await stack.cancel_listeners()
            async with Ours.open(stack) as ours:
                if self.wants("cooperative"):
                    self.data["cooperative"] = await self._phase(
                        "cooperative", f"1a. cooperative cancel x{plan.cooperative}",
                        lambda: cancel_cooperative.run(ours, plan.cooperative, self.rng))
                if self.wants("uncooperative"):
                    await self._uncooperative(ours)
                if self.wants("cancel_all"):
                    self.data["cancel_all"] = await self._phase(
                        "cancel_all", "3. cancel-all at scale",
                        lambda: cancel_all.run(ours, plan.cancel_all))
                if self.wants("check"):
                    probe = await ours.api.submit("distill", {"chunks": 1, "chunk_seconds": 0})
                    self.data["check_row_read"] = await self._phase(
                        "check_row_read", "2. cost of one row read (the fallback poll)",
                        lambda: check_cost.db_poll(ours.rows, probe["id"], plan.row_reads))
                if self.wants("api"):
                    self.data["api"] = await self._phase(
                        "api", f"5. API load ({plan.api_concurrency} clients, "
                               f"{plan.api_seconds:g}s per endpoint) and RSS",
                        lambda: api_load.run(ours, concurrency=plan.api_concurrency,
                                             duration=plan.api_seconds,
                                             max_requests=plan.api_max_requests, rng=self.rng))
            listeners["at_end"] = await stack.cancel_listeners()
            self.data["cancel_listeners"] = listeners
            # A cancel whose Redis event could not be sent still lands, through the poll.
            self.data["api_log"] = {"cancel_event_failed": count(
                s.log_path("app.log"), "task.cancel_event_failed")}
            return {"cancel_grace_s": s.cancel_grace, "kill_margin_s": s.kill_margin,
                    "force_window_s": s.force_window, "heartbeat_interval_s": s.heartbeat_interval,
                    "heartbeat_timeout_s": s.heartbeat_timeout,
                    "cancel_poll_interval_s": s.cancel_poll_interval,
                    "reconcile_interval_s": s.reconcile_interval,
                    "worker_concurrency": s.worker_concurrency}
        finally:
            await asyncio.to_thread(stack.stop)
            await stack.destroy()

    async def _uncooperative(self, ours: Ours) -> None:
        plan = self.plan
        out: dict[str, Any] = {}
        for mode, rounds in (("sleep", plan.sleep), ("gil", plan.gil)):
            out[mode] = await self._phase(
                f"uncooperative_{mode}", f"1b. uncooperative cancel, stubborn mode={mode} "
                                         f"x{rounds}",
                lambda mode=mode, rounds=rounds: cancel_uncooperative.run(ours, mode, rounds,
                                                                          self.rng))
        self.data["uncooperative"] = out

    async def _celery(self, servers: Servers) -> None:
        plan = self.plan
        worker = PlainWorker(servers.redis_url, self.out_dir / "plain")
        try:
            await self._phase("start_celery", "starting a plain Celery worker (prefork, 2)",
                              lambda: asyncio.to_thread(worker.start))
            if self.wants("celery"):
                self.data["celery_terminate"] = await self._phase(
                    "celery_terminate",
                    f"1c. Celery revoke(terminate=True, SIGKILL) x{plan.terminate}",
                    lambda: asyncio.to_thread(celery_terminate.run, worker, plan.terminate,
                                              self.rng))
                self.data["celery_abort"] = await self._phase(
                    "celery_abort", f"1d. Celery AbortableTask abort() x{plan.abort}",
                    lambda: asyncio.to_thread(celery_abort.run, worker, plan.abort, self.rng))
            if self.wants("check"):
                self.data["check_is_aborted"] = await self._phase(
                    "check_is_aborted", "2. cost of one is_aborted() check",
                    lambda: asyncio.to_thread(check_cost.is_aborted, worker,
                                              plan.is_aborted_checks))
        finally:
            await asyncio.to_thread(worker.stop)
            await delete_prefix(servers.redis_url, worker.prefix)


async def _sample_load(into: list[float], every: float = 5.0) -> None:
    while True:
        into.append(round(os.getloadavg()[0], 2))
        await asyncio.sleep(every)


async def _start(stack: Stack) -> None:
    await stack.start_worker()
    await stack.start_reaper()
    await stack.start_api()
