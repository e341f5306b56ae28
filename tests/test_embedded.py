"""Embedded PostgreSQL and Redis: real servers from the wheels, started, shared, stopped, adopted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest
import redis
import redis.asyncio as aioredis
from kombu import Connection

from devstack.embedded import EmbeddedServices

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir() -> Iterator[Path]:
    """Shared by the tests of this module; outside pytest's tmp root, see `scratch`."""
    path = Path(tempfile.mkdtemp(prefix="taskreaper-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)



@pytest.fixture
def services(run_dir: Path) -> Iterator[EmbeddedServices]:
    embedded = EmbeddedServices(run_dir)
    yield embedded
    embedded.stop()


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def _server_tree(embedded: EmbeddedServices) -> list[int]:
    """The servers and every process they forked (postgres' checkpointer, walwriter, ...)."""
    pids = []
    for pid in embedded.server_pids():
        pids.append(pid)
        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    return pids


async def _write_and_read(database_url: str, redis_url: str, marker: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT current_database()") == "taskreaper"
        await conn.execute("CREATE TABLE IF NOT EXISTS probe (marker text PRIMARY KEY)")
        await conn.execute("INSERT INTO probe VALUES ($1)", marker)
    finally:
        await conn.close()
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        await client.set(f"probe:{marker}", "async")
        assert await client.get(f"probe:{marker}") == "async"
    finally:
        await client.aclose()


async def _read_row(database_url: str, marker: str) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT marker FROM probe WHERE marker = $1", marker)
    finally:
        await conn.close()


def test_urls_work_for_asyncpg_redis_and_kombu(services: EmbeddedServices) -> None:
    # given
    database_url, redis_url = services.start()
    marker = uuid.uuid4().hex
    # when
    asyncio.run(_write_and_read(database_url, redis_url, marker))
    # then: the sync client sees what the async one wrote, and Celery's transport connects
    assert redis.Redis.from_url(redis_url, decode_responses=True).get(f"probe:{marker}") == "async"
    with Connection(redis_url) as conn:
        queue = conn.SimpleQueue(f"probe-{marker}")
        queue.put({"marker": marker})
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    assert message.payload == {"marker": marker}
    # never the standard TCP ports, where a system server may already listen
    assert urlsplit(redis_url).port not in (None, 6379)
    assert urlsplit(database_url).port is None and "host=/" in database_url


def test_stop_ends_every_server_process_and_restart_keeps_data(run_dir: Path) -> None:
    # given: a row and a key written before a full stop
    first = EmbeddedServices(run_dir)
    database_url, redis_url = first.start()
    marker = uuid.uuid4().hex
    asyncio.run(_write_and_read(database_url, redis_url, marker))
    tree = _server_tree(first)
    assert len(tree) >= 3
    # when
    started = time.monotonic()
    first.stop()
    took = time.monotonic() - started
    # then
    assert _alive(tree) == []
    assert took < 10, f"stop took {took:.1f}s"
    second = EmbeddedServices(run_dir)
    try:
        database_url, redis_url = second.start()
        assert asyncio.run(_read_row(database_url, marker)) == marker
        assert redis.Redis.from_url(redis_url).get(f"probe:{marker}") == b"async"
    finally:
        second.stop()


def test_a_second_user_attaches_and_the_last_one_stops(run_dir: Path) -> None:
    # given
    owner = EmbeddedServices(run_dir)
    urls = owner.start()
    guest = EmbeddedServices(run_dir)
    try:
        # when
        assert guest.start() == urls
        tree = _server_tree(owner)
        owner.stop()
        # then: the guest still has working servers
        assert _alive(tree) == tree
        assert redis.Redis.from_url(urls[1]).ping()
    finally:
        owner.stop()
        guest.stop()
    assert _alive(tree) == []


def _kill_leftovers(path: Path) -> None:
    """Last-resort cleanup so a failing test leaves no servers behind."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(path) in part for part in proc.info.get("cmdline") or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_servers_of_a_killed_process_are_adopted_and_stopped(scratch: Path) -> None:
    # given: a process that started the servers and died without stopping them; a deep
    # run_dir also forces the postgres socket out of the data directory
    deep = scratch.joinpath(*(["d" * 30] * 4))
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from devstack.embedded import EmbeddedServices
        print("URLS", *EmbeddedServices(Path({str(deep)!r})).start(), flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    heir = EmbeddedServices(deep)
    tree: list[int] = []
    try:
        assert proc.stdout is not None
        words: list[str] = []
        for line in proc.stdout:
            if line.startswith("URLS"):
                words = line.split()
                break
        assert words, f"the first process failed (exit {proc.poll()})"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        database_url, redis_url = words[1:]
        marker = uuid.uuid4().hex
        asyncio.run(_write_and_read(database_url, redis_url, marker))
        # when
        heir_urls = heir.start()
        tree = _server_tree(heir)
        # then: same servers, same data, and the heir's stop ends them
        assert heir_urls == (database_url, redis_url)
        assert asyncio.run(_read_row(database_url, marker)) == marker
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        heir.stop()
        _kill_leftovers(deep)
    assert len(tree) >= 3 and _alive(tree) == []
