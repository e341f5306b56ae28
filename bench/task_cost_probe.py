"""`python -m bench.task_cost_probe [celery worker options]`: our worker, instrumented.

The same worker as `python -m services.worker`, with timers and counters wrapped around the
steps of a delivery before it starts (nothing in services/ changes). Each pool process
appends one JSON line per delivery to `$TASK_COST_PROBE_DIR/probe-<pid>.jsonl`:

- `t0`, `t1`: wall clock at the start and end of `Runtime.execute` (the task's thread);
- `ms`: milliseconds per step, summed over the delivery: `guard` (cancel-channel SUBSCRIBE
  and the cancelled-set ZSCORE), `claim` (`Db.claim_task`, `Db.saved_chunks`),
  `begin` (the `running` event and the heartbeat's start), `user` (the actor's code,
  checkpoint crossings included), `checkpoint` (each `save_result` on the sidecar loop),
  `finish` (`Sidecar.end`: the flush, `Db.finish_task`, unsubscribing, the registry entry's
  removal, the end event), with `finish_db`, `unsubscribe`, `registry_remove` and `events`
  (every `task.*` event of the delivery) apart; the heartbeat's first round, which runs
  beside the task on the sidecar loop: `first_beat_registry` (the registry entry) and
  `first_beat_report` (the beat handed to the main process); `heartbeat_life` (the
  heartbeat task, from begin() to its cancel at the end); `execute` (all of it, from the
  task's thread, so the thread crossings are what it has beyond the steps);
- `db`, `redis`: statements (by named query, or BEGIN/COMMIT) and Redis commands (by name)
  each step sent over the process's own clients.

Wrapping costs a few microseconds a call; the un-instrumented worker's throughput is what
the section reports as ours.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEP: contextvars.ContextVar[str] = contextvars.ContextVar("task_cost_step", default="other")
_lock = threading.Lock()


class Delivery:
    """What the current delivery of this pool process has cost so far."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.db: dict[str, Counter[str]] = defaultdict(Counter)
        self.redis: dict[str, Counter[str]] = defaultdict(Counter)

    def add_ms(self, step: str, ms: float) -> None:
        with _lock:
            self.ms[step] += ms

    def count(self, table: dict[str, Counter[str]], what: str, n: int = 1) -> None:
        with _lock:
            table[STEP.get()][what] += n

    def line(self, **extra: Any) -> str:
        with _lock:
            return json.dumps({
                **extra, "ms": {k: round(v, 3) for k, v in self.ms.items()},
                "db": {k: dict(v) for k, v in self.db.items()},
                "redis": {k: dict(v) for k, v in self.redis.items()}})


current = Delivery()


def _timed(step: str, *, sets_step: bool = True) -> Callable[[Any], Any]:
    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            token = STEP.set(step) if sets_step else None
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                current.add_ms(step, (time.perf_counter() - started) * 1000)
                if token is not None:
                    STEP.reset(token)
        return timed
    return wrap


def _first_round(step: str) -> Callable[[Any], Any]:
    """Times a heartbeat call on its first round of each delivery only: later rounds are
    per second of a task's life, not per task."""
    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            first = step not in current.ms
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                if first:
                    current.add_ms(step, (time.perf_counter() - started) * 1000)
        return timed
    return wrap


def _statement_names() -> dict[str, str]:
    from shared.db.base import queries

    return {sql: name for name, sql in queries().items()}


def _count_db() -> None:
    import asyncpg.connection

    names = _statement_names()

    def label(query: str) -> str:
        text = query.strip()
        return names.get(text) or text.split(None, 1)[0].upper()[:24]

    cls = asyncpg.connection.Connection
    for method in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
        original = getattr(cls, method)

        def make(original: Any) -> Any:
            @functools.wraps(original)
            async def counted(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
                current.count(current.db, label(query))
                return await original(self, query, *args, **kwargs)
            return counted

        setattr(cls, method, make(original))


def _count_redis() -> None:
    import redis.asyncio.client as aclient

    original_command = aclient.Redis.execute_command

    @functools.wraps(original_command)
    async def command(self: Any, *args: Any, **options: Any) -> Any:
        current.count(current.redis, str(args[0]).upper())
        return await original_command(self, *args, **options)

    aclient.Redis.execute_command = command
    original_pipeline = aclient.Pipeline.execute

    @functools.wraps(original_pipeline)
    async def pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        for cmd in self.command_stack:
            current.count(current.redis, str(cmd[0][0]).upper())
        if self.is_transaction:
            current.count(current.redis, "MULTI/EXEC")
        return await original_pipeline(self, *args, **kwargs)

    aclient.Pipeline.execute = pipeline
    original_pubsub = aclient.PubSub.execute_command

    @functools.wraps(original_pubsub)
    async def pubsub(self: Any, *args: Any) -> Any:
        current.count(current.redis, str(args[0]).upper())
        return await original_pubsub(self, *args)

    aclient.PubSub.execute_command = pubsub


def install(out_dir: Path) -> None:
    from services.worker import lifecycle
    from services.worker.cancel_listener import CancelListener
    from services.worker.heartbeat import Heartbeat
    from services.worker.registry_entry import RegistryEntry
    from services.worker.runtime import Runtime
    from services.worker.sidecar import Sidecar
    from shared.db import Db

    _count_db()
    _count_redis()
    lifecycle._taken = _timed("guard")(lifecycle._taken)
    lifecycle._claim_or_retry = _timed("claim")(lifecycle._claim_or_retry)
    Sidecar.begin = _timed("begin")(Sidecar.begin)
    Sidecar.end = _timed("finish")(Sidecar.end)
    Sidecar.save_result = _timed("checkpoint")(Sidecar.save_result)
    Sidecar.publish = _timed("events", sets_step=False)(Sidecar.publish)
    Db.finish_task = _timed("finish_db", sets_step=False)(Db.finish_task)
    CancelListener.forget = _timed("unsubscribe", sets_step=False)(CancelListener.forget)
    RegistryEntry.remove = _timed("registry_remove", sets_step=False)(RegistryEntry.remove)
    # Its rounds run in a task begin() made: their commands count as the heartbeat's.
    Heartbeat._beats = _timed("heartbeat_life")(Heartbeat._beats)
    Heartbeat._report = _first_round("first_beat_report")(Heartbeat._report)
    RegistryEntry.refresh = _first_round("first_beat_registry")(RegistryEntry.refresh)

    run = Runtime._run

    def user(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return run(self, *args, **kwargs)
        finally:
            current.add_ms("user", (time.perf_counter() - started) * 1000)

    Runtime._run = user
    execute = Runtime.execute

    def delivery(self: Any, act: Any, task_id: str, message_id: str) -> str:
        global current
        current = Delivery()
        t0 = time.time()
        started = time.perf_counter()
        outcome = "error"
        try:
            outcome = execute(self, act, task_id, message_id)
            return outcome
        finally:
            current.add_ms("execute", (time.perf_counter() - started) * 1000)
            line = current.line(task_id=task_id, pid=os.getpid(), t0=t0, t1=time.time(),
                                outcome=outcome)
            with open(out_dir / f"probe-{os.getpid()}.jsonl", "a") as f:
                f.write(line + "\n")

    Runtime.execute = delivery


def main() -> None:
    out_dir = Path(os.environ["TASK_COST_PROBE_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)
    install(out_dir)
    from services.worker.__main__ import main as worker_main

    worker_main()


if __name__ == "__main__":
    main()
