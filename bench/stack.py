"""What the bench runs against: PostgreSQL and Redis, a database and key prefix of its own,
and our worker, reaper and API as real child processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench.poll import until
from bench.procs import ROOT, Child
from devstack.databases import create_database, drop_database
from shared.broker import make_celery
from shared.keys import Keys
from shared.settings import Settings
from tests.support import free_port, settings_env


@dataclass
class Servers:
    """The PostgreSQL and Redis servers: the configured ones, or the embedded pair."""

    database_url: str
    redis_url: str
    kind: str
    _embedded: Any = None

    @classmethod
    def open(cls) -> Servers:
        database_url = os.environ.get("DATABASE_URL", "")
        redis_url = os.environ.get("REDIS_URL", "")
        if database_url and redis_url:
            return cls(database_url, redis_url, "configured (DATABASE_URL, REDIS_URL)")
        from devstack.embedded import EmbeddedServices

        embedded = EmbeddedServices(ROOT / ".run")
        urls = embedded.start()
        return cls(database_url or urls[0], redis_url or urls[1], "embedded (.run/)", embedded)

    def close(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()


async def delete_prefix(redis_url: str, prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.delete(*batch)
                batch = []
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def scratch(servers: Servers, name: str, **overrides: Any) -> AsyncIterator[Settings]:
    """Settings for a database and a key prefix of their own, both removed on leaving: for a
    bench that runs our code in-process, where nothing else may see its rows and keys."""
    tag = uuid.uuid4().hex[:10]
    db_name = f"bench_{tag}_{name}"
    url = await create_database(servers.database_url, db_name)
    settings = Settings.from_env({}, database_url=url, redis_url=servers.redis_url,
                                 key_prefix=f"bench-{name}-{tag}", **overrides)
    try:
        yield settings
    finally:
        await drop_database(servers.database_url, db_name)
        await delete_prefix(servers.redis_url, settings.key_prefix)


@dataclass
class Stack:
    """Our three services for one run; `settings` is what every one of them reads."""

    servers: Servers
    out_dir: Path
    settings: Settings
    db_name: str
    node: str
    children: dict[str, Child] = field(default_factory=dict)

    @classmethod
    async def create(cls, servers: Servers, out_dir: Path, **overrides: Any) -> Stack:
        tag = uuid.uuid4().hex[:10]
        db_name = f"bench_{tag}"
        url = await create_database(servers.database_url, db_name)
        settings = Settings.from_env(
            {}, database_url=url, redis_url=servers.redis_url, key_prefix=f"bench-{tag}",
            api_token=secrets.token_hex(16), log_dir=str(out_dir / "logs"),
            run_dir=str(out_dir), port=free_port(), reaper_metrics_port=0,
            # The load section measures the API itself, not the per-token limit on mutations.
            **{"rate_limit": 0.0, **overrides})
        return cls(servers, out_dir, settings, db_name, f"bench{tag}@{socket.gethostname()}")

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    @property
    def worker_log(self) -> Path:
        return self.settings.log_path("celery_worker.log")

    def _child(self, name: str, module: str, args: list[str], settings: Settings) -> Child:
        child = Child(name, module, args, settings_env(settings), self.out_dir / f"{name}.out")
        self.children[name] = child.start()
        return child

    async def start_worker(self) -> Child:
        child = self._child("worker", "services.worker", ["-n", self.node], self.settings)
        celery = make_celery(self.settings)
        try:
            await until(lambda: self._worker_ready(child, celery), 60, "worker ready")
        finally:
            celery.close()
        return child

    async def _worker_ready(self, child: Child, celery: Any) -> bool:
        child.check()
        replies = await asyncio.to_thread(celery.control.ping, destination=[self.node],
                                          timeout=0.5)
        return bool(replies) and len(child.live_children()) >= self.settings.worker_concurrency

    async def worker_pool_full(self, timeout: float = 30.0) -> None:
        """Waits until the worker has all its pool processes (after a kill, Celery forks anew)."""
        child = self.children["worker"]

        async def full() -> bool:
            child.check()
            return len(child.live_children()) >= self.settings.worker_concurrency

        await until(full, timeout, "worker pool back to full size", interval=0.02)

    async def start_reaper(self) -> Child:
        child = self._child("reaper", "services.reaper", [], self.settings)
        client = aioredis.from_url(self.settings.redis_url)
        try:
            async def leading() -> bool:
                child.check()
                return bool(await client.get(self.keys.leader))

            await until(leading, 30, "reaper leadership")
        finally:
            await client.aclose()
        return child

    async def start_api(self) -> Child:
        child = self._child("api", "services.api", [], self.settings)
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                child.check()
                try:
                    async with http.get(f"{self.base_url}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await until(ready, 30, "API ready")
        return child

    async def cancel_listeners(self) -> int:
        """Connections subscribed to the cancel channel: one per pool process's sidecar, and
        one for the worker main process's guardian when it is on."""
        client = aioredis.from_url(self.settings.redis_url)
        try:
            found = await client.pubsub_numsub(self.keys.cancel_channel)
            return int(found[0][1]) if found else 0
        finally:
            await client.aclose()

    def stop(self) -> None:
        for name in list(self.children)[::-1]:
            self.children.pop(name).stop()

    async def destroy(self) -> None:
        self.stop()
        await drop_database(self.servers.database_url, self.db_name)
        await delete_prefix(self.servers.redis_url, self.settings.key_prefix)

