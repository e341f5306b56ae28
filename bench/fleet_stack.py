"""The fleet the `fleet` section measures: three simulated hosts with one worker each, a
reaper, every DB connection through a PgBouncer in transaction mode, and a Redis server
of its own (so that its counters count only the fleet).

A simulated host (tests/hosts.py) is a PID and UTS namespace: its own hostname and pid
numbers, the machine's network and files. Everything here is started by `open` and
removed by `close`, whatever state `open` reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import redis
import redis.asyncio as aioredis

from bench.poll import until
from bench.procs import Child
from bench.stack import Servers
from devstack.databases import create_database, drop_database
from shared.keys import Keys
from shared.settings import Settings
from tests.support import free_port, settings_env

HOST_NAMES = ("fleet-a", "fleet-b", "fleet-c")
# Server connections PgBouncer may open to the bench database. PostgreSQL's
# max_connections (100 here) is shared with everyone else on the machine; a transaction
# pooler needs only as many as there are transactions at the same moment.
POOL_SIZE = 20


class Unavailable(RuntimeError):
    """What the section needs is missing on this machine."""


def why_unavailable() -> str | None:
    try:
        from tests.hosts import unavailable
        from tests.pgbouncer import binary
    except Exception as exc:  # the helpers live in tests/; a checkout without them
        return f"tests/hosts.py or tests/pgbouncer.py not importable: {exc}"
    if (why := unavailable()) is not None:
        return why
    if binary() is None:
        return "pgbouncer not found (Debian's pgbouncer)"
    if redis_binary() is None:
        return "no redis-server binary"
    return None


def redis_binary() -> str | None:
    found = shutil.which("redis-server", path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"]))
    if found:
        return found
    try:
        from devstack.redis_server import redis_server_binary

        return str(redis_server_binary())
    except Exception:
        return None


class PrivateRedis:
    """A redis-server on a free port, keeping nothing on disk."""

    def __init__(self, maxclients: int = 10_000) -> None:
        self.port = free_port()
        self.maxclients = maxclients
        self.workdir = Path(tempfile.mkdtemp(prefix="taskreaper-fleet-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        exe = redis_binary()
        if exe is None:
            raise Unavailable("no redis-server binary")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir),
             "--maxclients", str(self.maxclients)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return self
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError("the fleet's redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Fleet:
    servers: Servers
    out_dir: Path
    concurrency: tuple[int, ...]
    cancel_grace: float
    db_name: str = field(default_factory=lambda: f"bench_fleet_{uuid.uuid4().hex[:10]}")
    redis_server: PrivateRedis | None = None
    bouncer: Any = None
    settings: Settings | None = None
    direct_url: str = ""
    hosts: list[Any] = field(default_factory=list)
    reaper: Child | None = None
    _db_created: bool = False

    # -- the pieces -------------------------------------------------------------------

    @property
    def s(self) -> Settings:
        assert self.settings is not None, "the fleet is not open"
        return self.settings

    @property
    def keys(self) -> Keys:
        return Keys(self.s.key_prefix)

    @property
    def workers(self) -> list[Any]:
        return [w for h in self.hosts for w in h.workers]

    @property
    def redis_port(self) -> int:
        assert self.redis_server is not None
        return self.redis_server.port

    def log_files(self) -> list[Path]:
        return [Path(h.settings.log_dir) / "celery_worker.log" for h in self.hosts]

    def roles(self) -> dict[int, str]:
        """Outer pid -> what it is: `pool` (a pool process), `worker` (a worker's main
        process: consumer, guardian), `reaper`, `bench` (this process), `pgbouncer`."""
        out: dict[int, str] = {os.getpid(): "bench"}
        for w in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess, LookupError):
                out[w.main.pid] = "worker"
            for p in w.pool():
                out[p.pid] = "pool"
        if self.reaper is not None and self.reaper.alive():
            out[self.reaper.pid] = "reaper"
            for p in self.reaper.children():
                out[p.pid] = "reaper"
        if self.bouncer is not None and self.bouncer.proc is not None:
            out[self.bouncer.pid] = "pgbouncer"
        return out

    def pool_pids(self) -> list[int]:
        return [p.pid for w in self.workers for p in w.pool()]

    # -- up ---------------------------------------------------------------------------

    async def open(self, say: Any = print) -> None:
        why = why_unavailable()
        if why is not None:
            raise Unavailable(why)
        from tests.pgbouncer import PgBouncer

        self.redis_server = await asyncio.to_thread(PrivateRedis().start)
        self.direct_url = await create_database(self.servers.database_url, self.db_name)
        self._db_created = True
        self.bouncer = PgBouncer(self.servers.database_url, pool_size=POOL_SIZE,
                                 max_client_conn=5000)
        await asyncio.to_thread(self.bouncer.start)
        tag = uuid.uuid4().hex[:8]
        self.settings = Settings.from_env(
            {}, database_url=self.bouncer.route(self.direct_url),
            redis_url=self.redis_server.url, key_prefix=f"bench-fleet-{tag}",
            api_token=secrets.token_hex(16), log_dir=str(self.out_dir / "logs"),
            run_dir=str(self.out_dir), port=free_port(), reaper_metrics_port=0,
            cancel_grace=self.cancel_grace)
        started = time.perf_counter()
        await self._start_hosts()
        say(f"  {len(self.hosts)} hosts, {sum(self.concurrency)} pool processes ready in "
            f"{time.perf_counter() - started:.1f} s")
        await self._start_reaper()

    def _start_host(self, name: str, size: int) -> None:
        """Called on the main thread: a host lives as long as the thread that made it."""
        from tests.hosts import SimulatedHost

        # Each host's worker writes its JSON log (`task.cancel_observed` lines) apart.
        settings = self.s.with_(log_dir=str(self.out_dir / "logs" / name))
        Path(settings.log_dir).mkdir(parents=True, exist_ok=True)
        host = SimulatedHost(name, settings, self.out_dir)
        self.hosts.append(host)
        host.start()
        host.start_worker(concurrency=size, wait=False)

    async def _start_hosts(self) -> None:
        for name, size in zip(HOST_NAMES, self.concurrency, strict=False):
            self._start_host(name, size)
        await asyncio.gather(*(asyncio.to_thread(w.wait_ready, 180.0) for w in self.workers))

    async def _start_reaper(self) -> None:
        self.reaper = Child("reaper", "services.reaper", [], settings_env(self.s),
                            self.out_dir / "reaper.out").start()
        client = aioredis.from_url(self.s.redis_url)
        try:
            async def leading() -> bool:
                assert self.reaper is not None
                self.reaper.check()
                return bool(await client.get(self.keys.leader))

            await until(leading, 30, "reaper leadership")
        finally:
            await client.aclose()

    async def direct(self) -> asyncpg.Pool:
        """A small pool straight to PostgreSQL: the bench's own reads stay out of
        PgBouncer's counters."""
        return await asyncpg.create_pool(self.direct_url, min_size=1, max_size=3,
                                         statement_cache_size=0)

    # -- down -------------------------------------------------------------------------

    def _stop_processes(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.terminate()
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop()
        if self.reaper is not None:
            with contextlib.suppress(Exception):
                self.reaper.stop()

    async def close(self) -> list[str]:
        """Removes everything `open` made; returns what could not be removed."""
        problems: list[str] = []
        await asyncio.to_thread(self._stop_processes)
        left = [p for h in self.hosts for p in h.processes()]
        if left:
            problems.append(f"{len(left)} processes of the simulated hosts still running")
        if self.bouncer is not None:
            try:
                await asyncio.to_thread(self.bouncer.remove)
            except Exception as exc:
                problems.append(f"pgbouncer: {exc}")
        if self._db_created:
            try:
                await drop_database(self.servers.database_url, self.db_name)
            except Exception as exc:
                problems.append(f"drop database {self.db_name}: {exc}")
        if self.redis_server is not None:
            await asyncio.to_thread(self.redis_server.stop)
        return problems

