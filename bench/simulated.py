"""8. Steady state at 100, 1,000 and 10,000 running tasks, with simulated executions.

A load generator that speaks the worker's protocol to PostgreSQL and Redis without running
any task code: N `queued` rows are made in a database of their own, then a few generator
processes (one per core) start N simulated executions between them. Each one does what a
pool process does for its delivery (`Runtime.execute` and the sidecar): SUBSCRIBE to the
task's cancel channel, ZSCORE in the cancelled set, `Db.claim_task`, ZREM from the pending
set, `Db.saved_chunks`, a `task.changed` event; then, every
min(HEARTBEAT_INTERVAL, CANCEL_POLL_INTERVAL), a step of `Heartbeat.run`:
`RegistryEntry.refresh` of its registry entry and its beat (the progress the task reported)
handed to its worker node's main process, or `Db.heartbeat` of its own when the main process
has not answered for `takeover_after`. Each worker node's guardian is simulated too: every
interval, `Db.node_heartbeat` with the beats its pool processes handed it and the state of
its other executions, then its answer to each (a `task.progress` event when the progress
changed since the last one, the process's own `Db.heartbeat` when the row has gone). The
hand-over itself (a datagram on a Unix socket between two processes of one host) is an
assignment here. The simulated task reports its next chunk every CHUNK_SECONDS. Executions
start at random moments over one interval, as tasks arriving one by one would.

Connections are pooled where a fleet holds its own in every pool process: every DB call
goes through PgBouncer in transaction mode (a private one) over a few pooled connections per
generator process, and Redis commands over a few pooled connections; the cancel
subscriptions share a few subscriber connections (1,000 channels each). A Redis server of
the bench's own (the same binary as the configured one) makes its counters and CPU time
this load's alone. The reaper's loops run meanwhile in the bench's process, as its daemon
schedules them, on a `ReaperContext` built as the daemon builds it, with each reconcile
pass timed.

After every execution has started and a warm-up, a window of `seconds`: the generators'
own counts (statements by query, Redis commands by kind, beats, latencies, event-loop lag,
their CPU time), the reaper's statements, and the servers' counters over the same window:
PgBouncer's SHOW STATS, pg_stat_database and pg_stat_wal, Redis INFO commandstats and cpu,
and the CPU time of every process involved (psutil). Then a few cancel events on task
channels (are the subscriptions alive), and the database's whole-run transaction count
against every statement the bench counted. Last, with the executions and the reaper
stopped, `pgbench` sends the heartbeat statement alone at the rate N executions would,
through PgBouncer and straight to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
import warnings
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psutil
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bench.plan import Plan
from bench.reconcile import TimedRule
from bench.stack import Servers, delete_prefix
from bench.stats import percentile
from bench.watch import claim_arguments
from devstack.databases import create_database, drop_database
from services.worker.beat_link import Answer, Heard
from services.worker.execution import Execution
from services.worker.heartbeat import beat_interval, takeover_after
from services.worker.sidecar import DB_CALL_TIMEOUT
from shared.cancellation import event_matches
from shared.db import Db, create_pool, queries
from shared.db.beats import Beat
from shared.events import encode
from shared.keys import Keys
from shared.redis_client import connect
from shared.registry import Entry, refresh
from shared.settings import Settings
from shared.states import STOPPING, TaskStatus

# Pooled connections per generator process: to PgBouncer, and to Redis for commands.
DB_CONNECTIONS = 16
REDIS_CONNECTIONS = 16
# Server connections PgBouncer may open to PostgreSQL for the bench database.
BOUNCER_POOL = 16
# Cancel channels per subscriber connection (plus the fleet-wide one on each).
CHANNELS_PER_SUBSCRIBER = 1000
# Pool processes per simulated worker node (each node has one guardian).
NODE_SIZE = Settings().worker_concurrency
# The simulated task moves to its next chunk this often: with chunks no longer than the
# interval, every beat carries new progress and sends an event (the most events a task
# can cause).
CHUNK_SECONDS = 1.0
TOTAL_CHUNKS = 1_000_000
WARMUP = 3.0
# Waits for every execution to have started, at most this long per 1,000 of them.
START_TIMEOUT_PER_1000 = 30.0
# Cancel events sent to task channels after the window: are the subscriptions alive.
PROBE_EVENTS = 10
LAG_EVERY = 0.05

_INSERT = """
INSERT INTO tasks (id, actor, queue, kwargs, status, message_id, total)
SELECT gen_random_uuid(), 'distill', 'default', '{}'::jsonb, 'queued', gen_random_uuid(), $1
FROM generate_series(1, $2::int)
RETURNING id, message_id
"""


# -- counting, shared by the generators and the reaper ---------------------------------------

class Tally:
    """Counts and samples; the ones inside the window [t0, t1) (wall clock) apart."""

    def __init__(self) -> None:
        self.t0 = math.inf
        self.t1 = math.inf
        self.window: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        self.samples: dict[str, array[float]] = {}
        self.errors: Counter[str] = Counter()

    def inside(self, t: float) -> bool:
        return self.t0 <= t < self.t1

    def count(self, key: str, t: float, n: int = 1) -> None:
        self.total[key] += n
        if self.t0 <= t < self.t1:
            self.window[key] += n

    def sample(self, key: str, value: float, t: float) -> None:
        if self.t0 <= t < self.t1:
            self.samples.setdefault(key, array("d")).append(value)

    def error(self, where: str, exc: BaseException) -> None:
        self.errors[f"{where}: {type(exc).__name__}: {str(exc)[:120]}"] += 1


class CountingPool:
    """An asyncpg pool that counts each statement by its query's name in queries.sql and
    times the wait for a pooled connection apart from the statement. Does what
    `asyncpg.Pool.fetch*` and `execute` do: acquire, run the one statement, release."""

    def __init__(self, pool: asyncpg.Pool, tally: Tally, prefix: str) -> None:
        self._pool = pool
        self._tally = tally
        self._prefix = prefix
        self._names = {sql: name for name, sql in queries().items()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def _run(self, method: str, query: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                   ) -> Any:
        t = time.time()
        asked = time.perf_counter()
        async with self._pool.acquire() as conn:
            got = time.perf_counter()
            result = await getattr(conn, method)(query, *args, **kwargs)
        name = self._names.get(query, "other")
        self._tally.count(f"{self._prefix}{name}", t)
        self._tally.sample(f"pool_wait_ms:{name}", (got - asked) * 1000, t)
        self._tally.sample(f"statement_ms:{name}", (time.perf_counter() - got) * 1000, t)
        return result

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run("fetch", query, args, kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run("fetchrow", query, args, kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run("fetchval", query, args, kwargs)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run("execute", query, args, kwargs)


def _redis_pool_client(url: str, connections: int) -> aioredis.Redis:
    """The sidecar's command client (2 s socket timeout, the shared retry policy), its
    connections pooled between the executions of one generator process."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=None, socket_connect_timeout=2,
        socket_timeout=2.0, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError])
    return aioredis.Redis(connection_pool=pool)


# -- one generator process ------------------------------------------------------------------

@dataclass
class _Sim:
    task_id: str
    message_id: str
    node: str
    pid: int
    ex: Execution | None = None
    published: tuple[Any, ...] | None = None
    cancelled_via: str | None = None
    chunk_started: float = 0.0
    # The beat last handed to the node's main process, and when (monotonic).
    report: Beat | None = None
    reported_at: float = 0.0
    # When the main process last answered for this execution (monotonic).
    heard_at: float = 0.0


@dataclass
class _Spec:
    index: int
    database_url: str
    redis_url: str
    key_prefix: str
    executions: list[tuple[str, str, str, int]]
    seed: int
    db_connections: int = DB_CONNECTIONS
    redis_connections: int = REDIS_CONNECTIONS
    channels_per_subscriber: int = CHANNELS_PER_SUBSCRIBER
    chunk_seconds: float = CHUNK_SECONDS


class Generator:
    """The simulated executions of one process, and its nodes' guardians."""

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.settings = Settings.from_env({}, database_url=spec.database_url,
                                          redis_url=spec.redis_url, key_prefix=spec.key_prefix,
                                          reaper_metrics_port=0)
        self.keys = Keys(spec.key_prefix)
        self.host = socket.gethostname()
        self.tally = Tally()
        self.rng = random.Random(spec.seed)
        self.sims = [_Sim(*e) for e in spec.executions]
        self.by_channel = {self.keys.task_cancel_channel(s.task_id): s for s in self.sims}
        self.interval = beat_interval(self.settings)
        self.patience = takeover_after(self.settings)
        self.pid_started = time.time()
        self.started = 0
        self.refused = 0
        self.all_started = asyncio.Event()
        self.stopping = False
        self.db: Db | None = None
        self.redis: aioredis.Redis | None = None
        self._subscribers: list[Any] = []
        self._subscribe_locks: list[asyncio.Lock] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.heard: list[float] = []
        self.first_started = math.inf
        self.last_started = 0.0

    # -- connections ------------------------------------------------------------------------

    async def open(self) -> None:
        pool = await create_pool(self.spec.database_url, min_size=self.spec.db_connections,
                                 max_size=self.spec.db_connections)
        self.db = Db(CountingPool(pool, self.tally, "db:"))  # type: ignore[arg-type]
        self.redis = _redis_pool_client(self.spec.redis_url, self.spec.redis_connections)
        await self.redis.ping()
        n = max(1, math.ceil(len(self.sims) / self.spec.channels_per_subscriber))
        ready = [asyncio.Event() for _ in range(n)]
        self._subscribers = [None] * n
        self._subscribe_locks = [asyncio.Lock() for _ in range(n)]
        self._listeners = [asyncio.create_task(self._listen(i, ready[i])) for i in range(n)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)

    async def close(self) -> None:
        for t in self._listeners:
            t.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()
        if self.db is not None:
            try:
                await asyncio.wait_for(self.db.close(), 10)
            except (TimeoutError, OSError):
                self.db.pool.terminate()

    async def _listen(self, index: int, ready: asyncio.Event) -> None:
        """One subscriber connection: the fleet-wide channel and its share of task channels
        (the sidecar's `_listen`, shared by many executions)."""
        client = connect(self.spec.redis_url, socket_timeout=None)
        try:
            async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(self.keys.cancel_channel)
                self.tally.count("redis:subscribe", time.time())
                self._subscribers[index] = pubsub
                ready.set()
                async for message in pubsub.listen():
                    if message and message.get("type") == "message":
                        channel = message["channel"]
                        self._on_event(channel.decode() if isinstance(channel, bytes)
                                       else channel, json.loads(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.tally.error("listener", exc)
        finally:
            await client.aclose()

    def _on_event(self, channel: str, event: dict[str, Any]) -> None:
        sim = self.by_channel.get(channel)
        targets = [sim] if sim is not None else self.sims
        for s in targets:
            ex = s.ex
            if ex is not None and event_matches(event, task_id=ex.id, actor=ex.actor,
                                                queue=ex.queue, started_at=ex.started_at):
                s.cancelled_via = s.cancelled_via or "event"
                if "sent" in event:
                    self.heard.append((time.time() - float(event["sent"])) * 1000)

    async def _watch(self, sim: _Sim, index: int) -> None:
        """`Sidecar.watch`: listens to the task's channel before its claim."""
        slot = index // self.spec.channels_per_subscriber
        async with self._subscribe_locks[slot]:
            await self._subscribers[slot].subscribe(self.keys.task_cancel_channel(sim.task_id))
        self.tally.count("redis:subscribe", time.time())

    # -- one execution ----------------------------------------------------------------------

    async def execution(self, sim: _Sim, index: int) -> None:
        assert self.db is not None and self.redis is not None
        await asyncio.sleep(self.rng.uniform(0, self.interval))
        tally, keys = self.tally, self.keys
        try:
            # open_execution: the fast path (lifecycle's `_taken`), then the claim.
            await self._watch(sim, index)
            await self.redis.zscore(keys.cancelled, sim.message_id)
            tally.count("redis:zscore", time.time())
            tid, mid = uuid.UUID(sim.task_id), uuid.UUID(sim.message_id)
            claim = await self.db.claim_task(**claim_arguments(
                tid, mid, worker=sim.node, pid=sim.pid,
                lease_seconds=self.settings.heartbeat_timeout,
                claim_timeout=self.settings.claim_timeout))
            self._settled(sim.message_id)
            if claim is None:
                self._counted(started=False)
                return
            await self.db.saved_chunks(tid)
            sim.ex = Execution(task_id=tid, message_id=mid, actor=claim.actor,
                               queue=claim.queue, attempt=claim.attempt,
                               started_at=claim.started_at.timestamp(),
                               kwargs=dict(claim.kwargs))
            # The task's first report: how many chunks, and the first one under way.
            sim.ex.progress.total = TOTAL_CHUNKS
            sim.ex.progress.current = 1
            sim.chunk_started = time.monotonic()
            now = time.time()
            self.first_started = min(self.first_started, now)
            self.last_started = max(self.last_started, now)
            self._counted(started=True)
            # Sidecar.begin
            await self._publish("task.changed", sim.ex, status=TaskStatus.RUNNING,
                                worker=sim.node)
        except Exception as exc:
            tally.error("start", exc)
            if sim.ex is None:
                self._counted(started=False)
            return
        await self._monitor(sim)

    def _counted(self, *, started: bool) -> None:
        if started:
            self.started += 1
        else:
            self.refused += 1
        if self.started + self.refused == len(self.sims):
            self.all_started.set()

    def _settled(self, message_id: str) -> None:
        assert self.redis is not None
        task = asyncio.create_task(self.redis.zrem(self.keys.pending, message_id))
        self.tally.count("redis:zrem", time.time())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _progress(self, sim: _Sim) -> None:
        """What the task reported since the last beat: one chunk done every CHUNK_SECONDS."""
        ex = sim.ex
        assert ex is not None
        step = self.spec.chunk_seconds
        if step <= 0:
            return
        while time.monotonic() - sim.chunk_started >= step:
            sim.chunk_started += step
            ex.progress.done += 1
            ex.progress.current = ex.progress.done + 1

    async def _monitor(self, sim: _Sim) -> None:
        """Heartbeat.run: register beside the beat's hand-over to the node's main process
        (and the process's own `Db.heartbeat` when the main process has not answered for
        `takeover_after`), then sleep the interval."""
        last = None
        tally = self.tally
        sim.heard_at = time.monotonic()
        while not self.stopping:
            t = time.time()
            started = time.perf_counter()
            if last is not None:
                tally.sample("period_ms", (started - last) * 1000, t)
            last = started
            self._progress(sim)
            self._report(sim)
            if time.monotonic() - sim.heard_at > self.patience:
                tally.count("own_beats", t)
                await asyncio.gather(self._register(sim), self._beat(sim))
            else:
                await self._register(sim)
            tally.count("beats", t)
            tally.sample("beat_ms", (time.perf_counter() - started) * 1000, t)
            await asyncio.sleep(self.interval)

    def _report(self, sim: _Sim) -> None:
        """Heartbeat.reading, handed over (PoolLink.report)."""
        ex = sim.ex
        assert ex is not None
        p = ex.progress
        sim.report = Beat(task_id=ex.task_id, attempt=ex.attempt, done=p.done, failed=p.failed,
                          total=p.total, current=p.current,
                          eta_seconds=p.eta_seconds(ex.elapsed(), ex.skipped))
        sim.reported_at = time.monotonic()

    async def _beat(self, sim: _Sim) -> None:
        """Heartbeat.beat, the process's own statement, minus the checkpoint flush (nothing
        is ever buffered here)."""
        assert self.db is not None
        ex = sim.ex
        assert ex is not None
        p = ex.progress
        t = time.time()
        started = time.perf_counter()
        try:
            row = await asyncio.wait_for(self.db.heartbeat(
                ex.task_id, ex.attempt, done=p.done, failed=p.failed, total=p.total,
                current=p.current, eta_seconds=p.eta_seconds(ex.elapsed(), ex.skipped)),
                DB_CALL_TIMEOUT)
            self.tally.sample("heartbeat_ms", (time.perf_counter() - started) * 1000, t)
            if row is None:
                await self.db.execution_state(ex.task_id)
                sim.cancelled_via = sim.cancelled_via or "poll"
            else:
                await self._publish_progress(sim)
            if row is not None and row["status"] == TaskStatus.CANCELLING:
                sim.cancelled_via = sim.cancelled_via or "poll"
        except Exception as exc:
            self.tally.count("heartbeat_failed", t)
            self.tally.error("heartbeat", exc)

    def _answered(self, sim: _Sim, answer: Answer) -> None:
        """Heartbeat._answered: the main process's answer to one beat."""
        sim.heard_at = time.monotonic()
        if answer.heard is Heard.WRITTEN:
            self._spawn(self._publish_progress(sim))
            if answer.status in STOPPING:
                sim.cancelled_via = sim.cancelled_via or "poll"
        elif answer.heard is Heard.GONE and sim.cancelled_via is None:
            self._spawn(self._beat(sim))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_progress(self, sim: _Sim) -> None:
        ex = sim.ex
        assert ex is not None
        p = ex.progress
        now = (p.done, p.failed, p.total, p.current)
        if now != sim.published:
            sim.published = now
            await self._publish("task.progress", ex,
                                eta_seconds=p.eta_seconds(ex.elapsed(), ex.skipped))

    async def _publish(self, kind: str, ex: Execution, **fields: Any) -> None:
        """Sidecar.publish."""
        assert self.redis is not None
        p = ex.progress
        t = time.time()
        try:
            await self.redis.publish(self.keys.events_channel, encode(
                kind, task_id=ex.id, attempt=ex.attempt, actor=ex.actor, done=p.done,
                failed=p.failed, total=p.total, current_chunk=p.current, **fields))
            self.tally.count("redis:publish", t)
        except Exception as exc:
            self.tally.error("publish", exc)

    async def _register(self, sim: _Sim) -> None:
        """RegistryEntry.refresh: one ZADD pushing the expiry on (the whole entry again only if
        it went missing)."""
        assert self.redis is not None
        ex = sim.ex
        assert ex is not None
        entry = Entry(task_id=ex.id, attempt=ex.attempt, message_id=str(ex.message_id),
                      node=sim.node, host=self.host, pid=sim.pid,
                      pid_started=self.pid_started, started_at=ex.started_at)
        t = time.time()
        started = time.perf_counter()
        try:
            await refresh(self.redis, self.keys, entry, self.settings.heartbeat_timeout)
            self.tally.count("redis:register", t)
            self.tally.sample("register_ms", (time.perf_counter() - started) * 1000, t)
        except Exception as exc:
            self.tally.count("register_failed", t)
            self.tally.error("register", exc)

    # -- each node's guardian ---------------------------------------------------------------

    async def guardian(self, members: list[_Sim]) -> None:
        """Guardian._beats without events: every interval, `Db.node_heartbeat` with the
        beats the node's executions handed over in the last three intervals and the state of
        its other executions, then each beat's answer."""
        assert self.db is not None
        every = self.interval
        tally = self.tally
        await asyncio.sleep(self.rng.uniform(0, every))
        while not self.stopping:
            now = time.monotonic()
            reports = [(s, replace(s.report, age=now - s.reported_at)) for s in members
                       if s.report is not None and now - s.reported_at <= 3 * every]
            reported = {s.task_id for s, _ in reports}
            watched = [s.ex.task_id for s in members
                       if s.ex is not None and s.task_id not in reported]
            if reports or watched:
                t = time.time()
                started = time.perf_counter()
                try:
                    states = await asyncio.wait_for(self.db.node_heartbeat(
                        [b for _, b in reports], watched), DB_CALL_TIMEOUT)
                    tally.sample("node_beat_ms", (time.perf_counter() - started) * 1000, t)
                    tally.count("rows_written", t, sum(1 for st in states if st.written))
                    found = {st.id: st for st in states}
                    for sim, b in reports:
                        self._answered(sim, Answer.to(b, found.get(b.task_id)))
                except Exception as exc:
                    tally.count("node_beat_failed", t)
                    tally.error("guardian", exc)
                    for sim, _ in reports:  # answered `failed`: the main process is there
                        sim.heard_at = time.monotonic()
            await asyncio.sleep(every)

    async def lag(self) -> None:
        """How late the event loop wakes a sleeper: the generator's own saturation."""
        while not self.stopping:
            started = time.perf_counter()
            await asyncio.sleep(LAG_EVERY)
            self.tally.sample("loop_lag_ms",
                              (time.perf_counter() - started - LAG_EVERY) * 1000, time.time())


async def _generator_main(conn: Any, spec: _Spec) -> dict[str, Any]:
    gen = Generator(spec)
    me = psutil.Process()
    await gen.open()
    tasks = [asyncio.create_task(gen.execution(s, i)) for i, s in enumerate(gen.sims)]
    nodes: dict[str, list[_Sim]] = {}
    for s in gen.sims:
        nodes.setdefault(s.node, []).append(s)
    tasks += [asyncio.create_task(gen.guardian(members)) for members in nodes.values()]
    tasks.append(asyncio.create_task(gen.lag()))
    limit = START_TIMEOUT_PER_1000 * max(1.0, len(gen.sims) / 1000)
    begun = time.time()
    try:
        await asyncio.wait_for(gen.all_started.wait(), limit)
    except TimeoutError:
        pass
    conn.send(("started", {"started": gen.started, "refused": gen.refused,
                           "start_s": round(time.time() - begun, 2)}))
    t0, t1, stop = await asyncio.to_thread(conn.recv)
    gen.tally.t0, gen.tally.t1 = t0, t1
    cpu: dict[str, float] = {}

    async def cpu_at(name: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        c = me.cpu_times()
        cpu[name] = c.user + c.system
        cpu[f"{name}_at"] = time.time()

    await asyncio.gather(cpu_at("t0", t0), cpu_at("t1", t1))
    await asyncio.sleep(max(0.0, stop - time.time()))
    gen.stopping = True
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await gen.close()
    return {
        "index": spec.index, "executions": len(gen.sims), "started": gen.started,
        "refused": gen.refused, "first_started": gen.first_started,
        "last_started": gen.last_started, "window": dict(gen.tally.window),
        "total": dict(gen.tally.total), "samples": gen.tally.samples,
        "errors": dict(gen.tally.errors.most_common(5)), "cpu": cpu,
        "heard_ms": gen.heard, "cancelled_via": dict(Counter(
            s.cancelled_via for s in gen.sims if s.cancelled_via)),
    }


def _generator_process(conn: Any, spec: _Spec) -> None:
    """Entry point of a generator process (spawned)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        result = asyncio.run(_generator_main(conn, spec))
    except BaseException as exc:  # the parent reports it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("done", result))
    conn.close()


# -- the servers' side --------------------------------------------------------------------

def _private_servers(database_url: str) -> tuple[Any, Any]:
    """A Redis server and a PgBouncer (transaction pooling) of the bench's own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver's platformdirs warns at import
        from tests.faults import RedisServer
        from tests.pgbouncer import PgBouncer
    redis_server = RedisServer().start()
    try:
        bouncer = PgBouncer(database_url, pool_size=BOUNCER_POOL, max_client_conn=2000).start()
    except BaseException:
        redis_server.remove()
        raise
    return redis_server, bouncer


def _close_server_connections(bouncer: Any, database: str) -> None:
    """PgBouncer drops every connection to the database (its backends exit, so their
    statistics are flushed), then takes new clients for it again."""
    from tests.pgbouncer import _psql

    for command in (f"KILL {database}", f"RESUME {database}"):
        subprocess.run([_psql(), "-X", "-q", "-h", "127.0.0.1", "-p", str(bouncer.port), "-U",
                        bouncer.user, "-d", "pgbouncer", "-c", command], capture_output=True,
                       text=True, timeout=10, check=False)


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            c = psutil.Process(pid).cpu_times()
            out[pid] = c.user + c.system
        except psutil.Error:
            continue
    return out


@dataclass
class Snapshot:
    at: float
    pg: dict[str, int]
    wal: dict[str, int]
    bouncer: dict[str, int]
    redis_commands: dict[str, tuple[int, int]]
    redis_cpu: dict[str, float]
    redis_clients: int
    redis_memory: int
    cpu: dict[str, dict[int, float]]
    system: dict[str, float]


class ServerCounters:
    """Reads the servers' counters and the CPU time of every process involved."""

    def __init__(self, admin: asyncpg.Connection, redis: aioredis.Redis, bouncer: Any,
                 redis_pid: int, db_name: str) -> None:
        self.admin = admin
        self.redis = redis
        self.bouncer = bouncer
        self.redis_pid = redis_pid
        self.db_name = db_name
        self.generators: list[int] = []

    async def snapshot(self) -> Snapshot:
        started = time.time()
        pg = dict(await self.admin.fetchrow(
            "SELECT xact_commit, xact_rollback, tup_updated, tup_fetched, blks_hit, blks_read "
            "FROM pg_stat_database WHERE datname = $1", self.db_name))
        wal = dict(await self.admin.fetchrow(
            "SELECT wal_records, wal_bytes::bigint AS wal_bytes, wal_write, wal_sync "
            "FROM pg_stat_wal"))
        activity = await self.admin.fetch(
            "SELECT pid, backend_type, datname FROM pg_stat_activity WHERE pid <> "
            "pg_backend_pid()")
        ours = [r["pid"] for r in activity if r["datname"] == self.db_name]
        aux = [r["pid"] for r in activity if r["backend_type"] != "client backend"
               and r["datname"] is None]
        stats = next((r for r in await asyncio.to_thread(self.bouncer.show, "STATS")
                      if r["database"] == self.db_name), {})
        commands = await self.redis.info("commandstats")
        cpu = await self.redis.info("cpu")
        clients = await self.redis.info("clients")
        memory = await self.redis.info("memory")
        system = psutil.cpu_times()
        return Snapshot(
            at=(started + time.time()) / 2, pg={k: int(v) for k, v in pg.items()},
            wal={k: int(v) for k, v in wal.items()},
            bouncer={k: int(v) for k, v in stats.items() if k.startswith("total_")},
            redis_commands={k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                            for k, v in commands.items()},
            redis_cpu={k: float(v) for k, v in cpu.items()},
            redis_clients=int(clients["connected_clients"]),
            redis_memory=int(memory["used_memory"]),
            cpu={"postgres_backends": _cpu_seconds(ours), "postgres_background": _cpu_seconds(aux),
                 "pgbouncer": _cpu_seconds([self.bouncer.pid]),
                 "redis": _cpu_seconds([self.redis_pid]),
                 "generators": _cpu_seconds(self.generators),
                 "bench_and_reaper": _cpu_seconds([os.getpid()])},
            system={"busy": system.user + system.system + system.nice + getattr(system, "irq", 0)
                    + getattr(system, "softirq", 0) + getattr(system, "steal", 0),
                    "iowait": getattr(system, "iowait", 0.0)})


def _cpu_delta(a: dict[int, float], b: dict[int, float]) -> float:
    return sum(v - a.get(pid, 0.0) for pid, v in b.items() if v >= a.get(pid, 0.0))


def _diff(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    seconds = b.at - a.at
    commands = {}
    for name, (calls, usec) in b.redis_commands.items():
        was_calls, was_usec = a.redis_commands.get(name, (0, 0))
        if calls > was_calls and name not in ("info",):
            commands[name] = {"calls": calls - was_calls, "usec": usec - was_usec}
    cores = {k: _cpu_delta(a.cpu[k], b.cpu[k]) / seconds for k in b.cpu}
    # INFO cpu: the main thread is what saturates first.
    main = ("used_cpu_user_main_thread", "used_cpu_sys_main_thread")
    if all(k in b.redis_cpu for k in main):
        cores["redis_main_thread"] = sum(b.redis_cpu[k] - a.redis_cpu[k] for k in main) / seconds
    cores["redis_info"] = sum(b.redis_cpu[k] - a.redis_cpu[k]
                              for k in ("used_cpu_user", "used_cpu_sys")) / seconds
    cores["machine_busy"] = (b.system["busy"] - a.system["busy"]) / seconds
    cores["machine_iowait"] = (b.system["iowait"] - a.system["iowait"]) / seconds
    ours = sum(cores[k] for k in ("postgres_backends", "pgbouncer", "redis", "generators",
                                  "bench_and_reaper"))
    cores["everything_else"] = max(0.0, cores["machine_busy"] - ours
                                   - cores["postgres_background"])
    return {
        "seconds": round(seconds, 3),
        "pg": {k: b.pg[k] - a.pg[k] for k in b.pg},
        "wal": {k: b.wal[k] - a.wal[k] for k in b.wal},
        "bouncer": {k: b.bouncer.get(k, 0) - a.bouncer.get(k, 0) for k in b.bouncer},
        "redis_commands": dict(sorted(commands.items(), key=lambda kv: -kv[1]["calls"])),
        "redis_clients": b.redis_clients,
        "redis_used_memory_mib": round(b.redis_memory / 2**20, 1),
        "cores": {k: round(v, 3) for k, v in cores.items()},
    }


# -- the reaper, in-process ------------------------------------------------------------------

class TimedCelery:
    """The reaper's Celery remote control, with the time its calls waited added up: no
    simulated node answers a broadcast, so each one waits its whole reply timeout."""

    def __init__(self, ops: Any) -> None:
        self._ops = ops
        self.waited = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ops, name)
        if name not in ("revoke", "kill", "active", "reserved_and_scheduled"):
            return attr

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                self.waited += time.perf_counter() - started

        return timed


class Reaper:
    """The daemon's five loops on a ReaperContext built as the daemon builds it; its DB
    calls counted, each reconcile pass timed (and apart, how long it waited for Celery's
    broadcasts, which no simulated node answers)."""

    def __init__(self, settings: Settings, tally: Tally) -> None:
        self.settings = settings
        self.tally = tally
        self.passes: list[dict[str, Any]] = []

    async def start(self) -> None:
        from services.reaper.broker_scan import BrokerScan
        from services.reaper.celery_ops import CeleryOps
        from services.reaper.context import ReaperContext
        from services.reaper.executor import CancelExecutor
        from services.reaper.leader import LeaderLock
        from services.reaper.metrics import ReaperMetrics
        from services.reaper.reconcile import Reconciler, default_rules
        from services.reaper.supervisor import Supervisor
        from services.reaper.sweeper import FenceSweeper
        from shared.broker import make_celery

        s = self.settings
        keys = Keys(s.key_prefix)
        pool = await create_pool(s.database_url, min_size=1, max_size=4)
        self.db = Db(CountingPool(pool, self.tally, "reaper:"))  # type: ignore[arg-type]
        self.redis = connect(s.redis_url)
        self.celery = CeleryOps(make_celery(s, "bench-sim-reaper"))
        self.ctx = ReaperContext(settings=s, db=self.db, redis=self.redis, celery=self.celery,
                                 keys=keys, metrics=ReaperMetrics(),
                                 leader=LeaderLock(self.redis, keys.leader, s.leader_ttl,
                                                   "bench-sim"))
        await self.ctx.leader.acquire_or_renew()
        self.rules = [TimedRule(r) for r in default_rules()]
        # The reconciler's own Celery calls, timed apart from the other loops' ones.
        self.reconcile_celery = TimedCelery(self.celery)
        self.reconciler = Reconciler(replace(self.ctx, celery=self.reconcile_celery),
                                     rules=tuple(self.rules))
        self.supervisor = Supervisor()
        sup = self.supervisor
        sup.every("leadership", s.leader_ttl / 3, self.ctx.leader.acquire_or_renew)
        sup.every("cancel_executor", min(0.25, s.reconcile_interval),
                  CancelExecutor(self.ctx).tick)
        sup.every("reconcile", s.reconcile_interval, self._reconcile)
        sup.every("broker_scan", min(0.5, s.orphan_scan_interval), BrokerScan(self.ctx).tick)
        sup.every("sweeper", 0.1, FenceSweeper(self.ctx).tick)

    async def _reconcile(self) -> None:
        for r in self.rules:
            r.ms.clear()
        t = time.time()
        self.reconcile_celery.waited = 0.0
        started = time.perf_counter()
        findings = await self.reconciler.tick()
        ms = (time.perf_counter() - started) * 1000
        self.passes.append({"at": t, "ms": round(ms, 2), "findings": findings,
                            "celery_wait_ms": round(self.reconcile_celery.waited * 1000, 2),
                            "rules_ms": {r.name: round(sum(r.ms), 2) for r in self.rules}})

    async def stop(self) -> None:
        await self.supervisor.stop()
        self.celery.close()
        await self.redis.aclose()
        await self.db.close()


# -- one size -------------------------------------------------------------------------------

def _summary(values: list[float] | array[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {"n": len(ordered), "p50": round(percentile(ordered, 50), 3),
            "p90": round(percentile(ordered, 90), 3), "p99": round(percentile(ordered, 99), 3),
            "max": round(ordered[-1], 3), "mean": round(statistics.fmean(ordered), 3)}


def _nodes(ids: list[tuple[uuid.UUID, uuid.UUID]], procs: int
           ) -> list[list[tuple[str, str, str, int]]]:
    """Executions grouped NODE_SIZE to a node, whole nodes dealt to the generators."""
    host = socket.gethostname()
    slices: list[list[tuple[str, str, str, int]]] = [[] for _ in range(procs)]
    for i, (tid, mid) in enumerate(ids):
        node = i // NODE_SIZE
        slices[node % procs].append((str(tid), str(mid), f"sim{node:05d}@{host}",
                                     4_000_000 + i))
    return [s for s in slices if s]


async def _one_size(servers: Servers, redis_server: Any, bouncer: Any, n: int, seconds: float,
                    procs: int, seed: int, say: Callable[[str], None], *,
                    pgbench_seconds: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    db_name = f"bench_{tag}_sim"
    direct = await create_database(servers.database_url, db_name)
    settings = Settings.from_env({}, database_url=bouncer.route(direct),
                                 redis_url=redis_server.url, key_prefix=f"bench-sim-{tag}",
                                 reaper_metrics_port=0)
    keys = Keys(settings.key_prefix)
    admin = await asyncpg.connect(servers.database_url)
    redis = connect(redis_server.url)
    procs_: list[Any] = []
    pipes: list[Any] = []
    reaper: Reaper | None = None
    out: dict[str, Any] = {"running": n, "node_size": NODE_SIZE, "generators": procs}
    try:
        # N queued rows, each with its message id in the pending set as a publish leaves it.
        conn = await asyncpg.connect(direct)
        try:
            rows = await conn.fetch(_INSERT, TOTAL_CHUNKS, n)
            await conn.execute("VACUUM ANALYZE tasks")
        finally:
            await conn.close()
        ids = [(r["id"], r["message_id"]) for r in rows]
        now = time.time()
        for i in range(0, n, 5000):
            await redis.zadd(keys.pending, {str(m): now for _, m in ids[i:i + 5000]})
        await asyncio.sleep(0.5)  # the loading backend's statistics reach the counters
        watch = ServerCounters(admin, redis, bouncer, redis_server.proc.pid, db_name)
        before_all = await watch.snapshot()
        reaper_tally = Tally()
        reaper = Reaper(settings, reaper_tally)
        await reaper.start()
        ctx = multiprocessing.get_context("spawn")
        for i, part in enumerate(_nodes(ids, procs)):
            parent_end, child_end = ctx.Pipe()
            spec = _Spec(index=i, database_url=settings.database_url,
                         redis_url=settings.redis_url, key_prefix=settings.key_prefix,
                         executions=part, seed=seed + i)
            proc = ctx.Process(target=_generator_process, args=(child_end, spec), daemon=True)
            proc.start()
            procs_.append(proc)
            pipes.append(parent_end)
        watch.generators = [p.pid for p in procs_]
        say(f"{n:,} running: {len(procs_)} generator processes starting the executions")
        started = time.time()
        starts = [await _receive(p, "started", 60 + START_TIMEOUT_PER_1000 * n / 1000)
                  for p in pipes]
        out["start"] = {"started": sum(s["started"] for s in starts),
                        "refused": sum(s["refused"] for s in starts),
                        "seconds": round(time.time() - started, 2)}
        t0 = time.time() + WARMUP + 1.0
        t1 = t0 + seconds
        stop = t1 + 1.5
        reaper_tally.t0, reaper_tally.t1 = t0, t1
        for p in pipes:
            p.send((t0, t1, stop))
        say(f"{n:,} running: {out['start']['started']:,} started in "
            f"{out['start']['seconds']:.1f} s; measuring {seconds:g} s")
        await asyncio.sleep(max(0.0, t0 - time.time()))
        first = await watch.snapshot()
        load = [os.getloadavg()[0]]
        await asyncio.sleep(max(0.0, t1 - time.time()))
        last = await watch.snapshot()
        load.append(os.getloadavg()[0])
        probe = await asyncpg.connect(direct)
        try:
            # One statement of the bench's own in the database (counted below).
            oldest = await probe.fetchrow(
                "SELECT extract(epoch FROM max(now() - heartbeat_at))::float8 AS oldest, "
                "count(*) FILTER (WHERE status = 'running') AS running "
                "FROM tasks WHERE status IN ('running', 'cancelling')")
        finally:
            await probe.close()
        # A few cancel events on task channels: do the subscriptions deliver?
        sample = random.Random(seed).sample(ids, min(PROBE_EVENTS, len(ids)))
        for tid, _ in sample:
            await redis.publish(keys.task_cancel_channel(str(tid)), json.dumps(
                {"ids": [str(tid)], "reason": "bench probe", "sent": time.time()}))
        results = [await _receive(p, "done", 120) for p in pipes]
        for proc in procs_:
            proc.join(10)
        passes = reaper.passes
        await reaper.stop()
        reaper = None
        # Every server connection of the database closes, so its statistics are complete.
        await asyncio.to_thread(_close_server_connections, bouncer, db_name)
        await asyncio.sleep(1.0)
        after_all = await watch.snapshot()
        interval = beat_interval(settings)
        out.update(_figures(n, interval, results, reaper_tally, first, last, before_all,
                            after_all, own_statements=1))
        out["load_average_1m"] = [round(v, 2) for v in load]
        out["oldest_heartbeat_s"] = round(oldest["oldest"] or 0.0, 2)
        out["running_rows_at_end"] = oldest["running"]
        out["probe_events"] = {"sent": len(sample),
                               "heard": sum(len(r["heard_ms"]) for r in results),
                               "delivery_ms": _summary([v for r in results
                                                        for v in r["heard_ms"]])}
        out["reconcile"] = _passes(passes, t0, t1)
        out["settings"] = {"heartbeat_interval_s": settings.heartbeat_interval,
                           "cancel_poll_interval_s": settings.cancel_poll_interval,
                           "heartbeat_timeout_s": settings.heartbeat_timeout,
                           "reconcile_interval_s": settings.reconcile_interval}
        if pgbench_seconds > 0 and shutil.which("pgbench"):
            rate = n / NODE_SIZE / interval
            say(f"{n:,} running: the node heartbeat statement alone at {rate:,.0f}/s "
                f"(pgbench), through PgBouncer and direct")
            out["pgbench"] = await _pgbench_phase(direct, bouncer, watch, n, rate,
                                                  pgbench_seconds)
        return out
    finally:
        for proc in procs_:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        if reaper is not None:
            await reaper.stop()
        await redis.aclose()
        await admin.close()
        await asyncio.to_thread(_close_server_connections, bouncer, db_name)
        await drop_database(servers.database_url, db_name)
        await delete_prefix(redis_server.url, keys.prefix)


# -- the heartbeat statement alone -------------------------------------------------------------

def _node_script(size: int) -> str:
    """`Db.node_heartbeat`'s statement for one node of `size` running rows out of N, each
    beat half an interval old, nothing else watched. The ids are derived from the row number
    (md5), so the client needs no list of them; the node's rows are consecutive numbers."""
    def each(expression: str, cast: str) -> str:
        items = ", ".join(expression.replace("K", f"(:i + {k})") for k in range(size))
        return f"ARRAY[{items}]::{cast}"

    arguments = {
        1: each("md5('hb-' || K)::uuid", "uuid[]"), 2: each("1", "int[]"),
        3: each("0.5", "float8[]"), 4: each("K % 1000", "int[]"), 5: each("0", "int[]"),
        6: each("1000000", "int[]"), 7: each("K % 1000 + 1", "int[]"),
        8: each("12.5", "float8[]"), 9: each("123456789", "bigint[]"),
        10: each("1.5", "real[]"), 11: "'{}'::uuid[]"}
    sql = queries()["node_heartbeat"]
    for number in sorted(arguments, reverse=True):  # $11 before $1
        sql = sql.replace(f"${number}", f"({arguments[number]})")
    lines = [line.split("--")[0].strip() for line in sql.splitlines()]
    body = " ".join(line for line in lines if line)
    return f"\\set i 1 + random(0, :nodes - 1) * {size}\n{body}\n"


_RUNNING_ROWS = """
INSERT INTO tasks (id, actor, queue, kwargs, status, attempt, message_id, started_at,
                   heartbeat_at, worker, pid, total)
SELECT md5('hb-' || g)::uuid, 'distill', 'default', '{}'::jsonb, 'running', 1,
       gen_random_uuid(), now(), now(), 'bench-pgbench', 5000000 + g, 1000000
FROM generate_series(1, $1::int) AS g
"""
PGBENCH_CLIENTS = 16


def _client_encoding() -> str:
    """client_encoding as the services' pool announces it at connect (asyncpg's own `utf-8`
    unless `shared.db` names one): PgBouncer compares it with the server's."""
    import shared.db

    named = getattr(shared.db, "SERVER_SETTINGS", None) or {}
    return str(named.get("client_encoding", "utf-8"))


async def _pgbench_phase(direct: str, bouncer: Any, watch: ServerCounters, n: int,
                         rate: float, seconds: float) -> dict[str, Any]:
    """`pgbench` (C, cheap per transaction) sends the node heartbeat statement at the rate
    N executions in nodes of NODE_SIZE would, over N running rows of its own: can
    PostgreSQL, and PgBouncer in front of it, keep up, at what latency and CPU? The client announces client_encoding as the
    services' pool does, so PgBouncer treats it as it treats them. Extended protocol: parsed
    and planned every time, like asyncpg's unnamed statements."""
    conn = await asyncpg.connect(direct)
    try:
        await conn.execute(_RUNNING_ROWS, n)
        await conn.execute("VACUUM ANALYZE tasks")
    finally:
        await conn.close()
    work = Path(tempfile.mkdtemp(prefix="bench-pgbench-"))
    try:
        script = work / "heartbeat.sql"
        script.write_text(_node_script(NODE_SIZE))
        out = {}
        parts = urlsplit(direct)
        for via, host, port in (("pgbouncer", "127.0.0.1", bouncer.port),
                                ("direct", parts.hostname or "127.0.0.1", parts.port or 5432)):
            out[via] = await _pgbench(work, script, via, host, port, parts.username or "postgres",
                                      parts.path.lstrip("/"), n, rate, seconds, watch, bouncer)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _pgbench(work: Path, script: Path, via: str, host: str, port: int, user: str,
                   database: str, n: int, rate: float, seconds: float, watch: ServerCounters,
                   bouncer: Any) -> dict[str, Any]:
    duration = max(3, int(round(seconds)))
    prefix = work / via
    env = {**os.environ, "PGCLIENTENCODING": _client_encoding()}
    before = await watch.snapshot()
    proc = await asyncio.create_subprocess_exec(
        "pgbench", "-n", "-M", "extended", "-c", str(PGBENCH_CLIENTS), "-j", "2",
        "-R", f"{rate:.0f}", "-T", str(duration), "-D", f"nodes={max(1, n // NODE_SIZE)}",
        "-f", str(script),
        "-l", "--log-prefix", str(prefix), "-h", host, "-p", str(port), "-U", user, database,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    watch.generators = [proc.pid]
    # The window leaves out the first and the last second of the run.
    await asyncio.sleep(1.0)
    first = await watch.snapshot()
    await asyncio.sleep(max(1.0, duration - 2.0))
    last = await watch.snapshot()
    stdout, stderr = await proc.communicate()
    text = stdout.decode(errors="replace")
    # Commits over the whole run, once every backend it used has exited (and flushed its
    # statistics), against the transactions pgbench says it ran.
    if via == "pgbouncer":
        await asyncio.to_thread(_close_server_connections, bouncer, database)
    await asyncio.sleep(0.5)
    after = await watch.snapshot()
    processed = re.search(r"actually processed: (\d+)", text)
    statements = int(processed.group(1)) if processed else 0
    win = _diff(first, last)
    latencies, lags = await asyncio.to_thread(_pgbench_log, work, via, first.at, last.at)
    done = len(latencies)
    w = win["seconds"]
    achieved = done / w if w else 0.0
    cores = win["cores"]
    return {
        "rate_target": round(rate, 1), "rate_achieved": round(achieved, 1),
        "ratio": round(achieved / rate, 4) if rate else None,
        "latency_ms": _summary(latencies), "schedule_lag_ms": _summary(lags),
        "window_s": w, "clients": PGBENCH_CLIENTS, "exit_code": proc.returncode,
        "error": stderr.decode(errors="replace")[-300:] if proc.returncode else "",
        "tps_line": next((t.strip() for t in text.splitlines() if t.startswith("tps")), ""),
        "statements_run": statements,
        "pg_xacts_per_statement": round((after.pg["xact_commit"] - before.pg["xact_commit"])
                                        / max(1, statements), 2),
        "cores": {k: cores[k] for k in ("postgres_backends", "postgres_background", "pgbouncer",
                                        "generators", "machine_busy", "everything_else")},
        "cpu_us": {
            "postgres_per_statement": round(cores["postgres_backends"] * 1e6
                                            / max(1.0, achieved), 1),
            "pgbouncer_per_statement": round(cores["pgbouncer"] * 1e6 / max(1.0, achieved), 1),
            "pgbench_per_statement": round(cores["generators"] * 1e6 / max(1.0, achieved), 1)},
        "wal_syncs_per_s": round(win["wal"]["wal_sync"] / w, 1) if w else None,
    }


def _pgbench_log(work: Path, via: str, start: float, end: float
                 ) -> tuple[list[float], list[float]]:
    """Latency and schedule lag (ms) of the transactions pgbench finished in [start, end)."""
    latencies: list[float] = []
    lags: list[float] = []
    for path in work.glob(f"{via}.*"):
        for line in path.read_text().splitlines():
            cols = line.split()
            # client, transaction, latency (µs), script, epoch s, µs[, schedule lag (µs)]
            if len(cols) < 6 or not start <= int(cols[4]) + int(cols[5]) / 1e6 < end:
                continue
            latencies.append(int(cols[2]) / 1000)
            if len(cols) >= 7:
                lags.append(int(cols[6]) / 1000)
    return latencies, lags


async def _receive(pipe: Any, kind: str, timeout: float) -> dict[str, Any]:
    ready = await asyncio.to_thread(pipe.poll, timeout)
    if not ready:
        raise TimeoutError(f"a generator process sent no {kind!r} within {timeout:.0f} s")
    got, body = pipe.recv()
    if got != kind:
        raise RuntimeError(f"a generator process {got}: {body}")
    return body


def _passes(passes: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    """The reconcile passes that began inside the window (all of them if none did)."""
    inside = [p for p in passes if t0 <= p["at"] < t1] or passes
    if not inside:
        return {"n": 0}
    rules: dict[str, list[float]] = {}
    findings: Counter[str] = Counter()
    for p in inside:
        for name, ms in p["rules_ms"].items():
            rules.setdefault(name, []).append(ms)
        findings.update({k: v for k, v in p["findings"].items() if v})
    without = [p["ms"] - p.get("celery_wait_ms", 0.0) for p in inside]
    return {**_summary([p["ms"] for p in inside]),
            "median_ms": round(statistics.median(p["ms"] for p in inside), 2),
            "without_celery_median_ms": round(statistics.median(without), 2),
            "without_celery_max_ms": round(max(without), 2),
            "celery_wait_ms_total": round(sum(p.get("celery_wait_ms", 0.0) for p in inside), 1),
            "rules_median_ms": {k: round(statistics.median(v), 2) for k, v in rules.items()},
            "findings": dict(findings), "all_passes": len(passes)}


# Redis commands each counted call of the generators sends.
_COMMANDS = {"register": ("zadd",), "publish": ("publish",),
             "zscore": ("zscore",), "zrem": ("zrem",), "subscribe": ("subscribe",)}
_SIDECAR_QUERIES = ("heartbeat", "execution_state", "save_result")
_GUARDIAN_QUERIES = ("node_heartbeat",)
_START_QUERIES = ("claim_task", "saved_chunks")


def _figures(n: int, interval: float, results: list[dict[str, Any]], reaper: Tally,
             first: Snapshot, last: Snapshot, before_all: Snapshot, after_all: Snapshot, *,
             own_statements: int) -> dict[str, Any]:
    win = _diff(first, last)
    seconds = win["seconds"]
    task_seconds = n * seconds
    window: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples: dict[str, list[float]] = {}
    for r in results:
        window.update(r["window"])
        total.update(r["total"])
        for key, values in r["samples"].items():
            samples.setdefault(key, []).extend(values)
    db = {k.removeprefix("db:"): v for k, v in window.items() if k.startswith("db:")}
    by_reaper = {k.removeprefix("reaper:"): v for k, v in reaper.window.items()
                 if k.startswith("reaper:")}
    statements = {
        "sidecar": sum(db.get(q, 0) for q in _SIDECAR_QUERIES),
        "guardian": sum(db.get(q, 0) for q in _GUARDIAN_QUERIES),
        "start": sum(db.get(q, 0) for q in _START_QUERIES),
        "other": sum(v for q, v in db.items()
                     if q not in _SIDECAR_QUERIES + _GUARDIAN_QUERIES + _START_QUERIES),
        "reaper": sum(by_reaper.values()),
    }
    counted = sum(statements.values())
    per_task_s = {k: round(v / task_seconds, 4) for k, v in statements.items()}
    per_task_s["total"] = round(counted / task_seconds, 4)
    # The whole run: every statement counted against the database's committed transactions.
    lifetime_counted = (sum(v for k, v in total.items() if k.startswith("db:"))
                        + sum(v for k, v in reaper.total.items() if k.startswith("reaper:"))
                        + own_statements)
    commands: Counter[str] = Counter()
    for call, names in _COMMANDS.items():
        for name in names:
            commands[name] += window.get(f"redis:{call}", 0)
    server_commands = {k: v["calls"] for k, v in win["redis_commands"].items()}
    sidecar_commands = sum(window.get(f"redis:{c}", 0) * len(_COMMANDS[c])
                           for c in ("register", "publish"))
    beats = window.get("beats", 0)
    target = n / interval
    cores = win["cores"]
    gen_cpu = sum(r["cpu"].get("t1", 0) - r["cpu"].get("t0", 0) for r in results)
    statements_per_s = counted / seconds
    server_calls = sum(server_commands.values())
    return {
        "window_s": seconds,
        "interval_s": interval,
        "statements": statements,
        "statements_by_query": dict(sorted(db.items(), key=lambda kv: -kv[1])),
        "reaper_statements_by_query": dict(sorted(by_reaper.items(), key=lambda kv: -kv[1])),
        "statements_per_task_s": per_task_s,
        "statements_per_s": round(statements_per_s, 1),
        "cross_check": {
            "pgbouncer_xacts": win["bouncer"].get("total_xact_count"),
            "pgbouncer_queries": win["bouncer"].get("total_query_count"),
            "pgbouncer_wait_ms_per_xact": round(
                win["bouncer"].get("total_wait_time", 0) / 1000
                / max(1, win["bouncer"].get("total_xact_count", 0)), 3),
            "counted": counted,
            "pg_xact_commit_window": win["pg"]["xact_commit"],
            "pg_xact_commit_run": after_all.pg["xact_commit"] - before_all.pg["xact_commit"],
            "pg_xact_rollback_run": (after_all.pg["xact_rollback"]
                                     - before_all.pg["xact_rollback"]),
            "counted_run": lifetime_counted,
        },
        "pg": {"tup_updated_per_s": round(win["pg"]["tup_updated"] / seconds, 1),
               "wal_bytes_per_statement": round(win["wal"]["wal_bytes"] / max(1, counted)),
               "wal_syncs_per_s": round(win["wal"]["wal_sync"] / seconds, 1),
               "wal_records_per_s": round(win["wal"]["wal_records"] / seconds, 1)},
        "redis": {
            "commands_server": dict(sorted(server_commands.items(), key=lambda kv: -kv[1])),
            "commands_counted": dict(commands),
            "per_task_s": round(server_calls / task_seconds, 3),
            "sidecar_per_task_s": round(sidecar_commands / task_seconds, 3),
            "commands_per_s": round(server_calls / seconds, 1),
            "usec_per_command": round(sum(v["usec"] for v in win["redis_commands"].values())
                                      / max(1, server_calls), 2),
            "clients": win["redis_clients"], "used_memory_mib": win["redis_used_memory_mib"],
        },
        "beats": {"target_per_s": round(target, 1), "achieved_per_s": round(beats / seconds, 1),
                  "ratio": round(beats / seconds / target, 4) if target else None,
                  "failed": window.get("heartbeat_failed", 0),
                  "own_per_s": round(window.get("own_beats", 0) / seconds, 1),
                  "node_beat_failed": window.get("node_beat_failed", 0),
                  "rows_written_per_s": round(window.get("rows_written", 0) / seconds, 1),
                  "register_failed": window.get("register_failed", 0)},
        "latency_ms": {k: _summary(v) for k, v in sorted(samples.items())},
        "cores": {**cores, "generators_own": round(gen_cpu / seconds, 3)},
        "cpu_us": {
            "postgres_per_statement": round(cores["postgres_backends"] * 1e6
                                            / max(1.0, statements_per_s), 1),
            "pgbouncer_per_statement": round(cores["pgbouncer"] * 1e6
                                             / max(1.0, statements_per_s), 1),
            "redis_per_command": round(cores.get("redis_main_thread", cores["redis"]) * 1e6
                                       / max(1.0, server_calls / seconds), 1),
            "generators_per_beat": round(gen_cpu * 1e6 / max(1, beats), 1),
        },
        "generator_errors": dict(sum((Counter(r["errors"]) for r in results), Counter())),
        "start_spread_s": round(max(r["last_started"] for r in results)
                                - min(r["first_started"] for r in results), 2),
        "cancelled_via": dict(sum((Counter(r["cancelled_via"]) for r in results), Counter())),
    }




async def run(servers: Servers, plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    # The reaper's warnings (zombies and the like when executions fall behind) are counted
    # in the results, not printed one by one.
    import logging

    import structlog

    previous = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        return await _run(servers, plan, say)
    finally:
        structlog.configure(wrapper_class=previous)


async def _run(servers: Servers, plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    sizes = list(plan.simulated)
    procs = max(1, min(plan.simulated_procs, os.cpu_count() or 1))
    redis_server, bouncer = await asyncio.to_thread(_private_servers, servers.database_url)
    out: dict[str, Any] = {"sizes": sizes, "window_s": plan.simulated_seconds,
                           "generators": procs, "node_size": NODE_SIZE,
                           "db_connections_per_generator": DB_CONNECTIONS,
                           "redis_connections_per_generator": REDIS_CONNECTIONS,
                           "pgbouncer_pool_size": BOUNCER_POOL,
                           "channels_per_subscriber": CHANNELS_PER_SUBSCRIBER,
                           "chunk_s": CHUNK_SECONDS, "runs": []}
    try:
        client = connect(redis_server.url)
        try:
            out["redis_maxclients"] = int((await client.config_get("maxclients"))["maxclients"])
        finally:
            await client.aclose()
        conn = await asyncpg.connect(servers.database_url)
        try:
            out["postgres_max_connections"] = int(await conn.fetchval("SHOW max_connections"))
            out["synchronous_commit"] = await conn.fetchval("SHOW synchronous_commit")
        finally:
            await conn.close()
        for i, n in enumerate(sizes):
            try:
                out["runs"].append(await _one_size(
                    servers, redis_server, bouncer, n, plan.simulated_seconds, procs,
                    1000 * i + 7, say, pgbench_seconds=plan.simulated_pgbench_seconds))
            except Exception as exc:
                say(f"{n:,} running: failed: {type(exc).__name__}: {exc}")
                out["runs"].append({"running": n, "error": f"{type(exc).__name__}: {exc}"})
        return out
    finally:
        await asyncio.to_thread(bouncer.remove)
        await asyncio.to_thread(redis_server.remove)
