"""Fixtures: real PostgreSQL and Redis (the configured ones, or embedded), a fresh
database per test module from a migrated template, a Redis key prefix per module,
and real Celery worker processes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from devstack.databases import create_database, drop_database
from shared.db import Db
from shared.settings import Settings
from tests.support import ServiceProcess, WorkerProcess

pytest_plugins = ["tests.fixtures_api"]

TEST_TOKEN = "test-token-" + uuid.uuid4().hex

# Every fixture that reaches PostgreSQL or Redis depends on one of these.
SERVER_FIXTURES = frozenset({"service_urls", "private_redis"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses a server fixture is `integration` unless its module says `e2e`, so
    that no module has to say it. `unit` is only ever given by hand (a test without servers
    may still start processes), and a `unit` test that reaches a server is an error: the
    unit tier runs with no server at all (`make test-unit`)."""
    for item in items:
        servers = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if not servers:
            continue
        if item.get_closest_marker("unit") is not None:
            raise pytest.UsageError(
                f"{item.nodeid} is marked unit but uses {', '.join(sorted(servers))}")
        if item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.integration)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m unit` alone, a test module whose text never names the mark is not imported:
    it holds no unit test (the mark is only given by hand), and importing every module
    would be most of the unit tier's time."""
    if config.option.markexpr.strip() != "unit" or not collection_path.name.startswith("test_") \
            or collection_path.suffix != ".py":
        return None
    return True if "mark.unit" not in collection_path.read_text() else None


@pytest.fixture(scope="session")
def service_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    embedded = None
    if not database_url or not redis_url:
        from devstack.embedded import EmbeddedServices

        embedded = EmbeddedServices(Path(os.environ.get("RUN_DIR", ".run")))
        urls = embedded.start()
        database_url = database_url or urls[0]
        redis_url = redis_url or urls[1]
    yield database_url, redis_url
    if embedded is not None:
        embedded.stop()


@pytest.fixture(scope="session")
def template_db(service_urls: tuple[str, str]) -> Iterator[str]:
    """A migrated database that each module's database is copied from."""
    name = f"tr_tpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(create_database(service_urls[0], name))
    yield name
    asyncio.run(drop_database(service_urls[0], name))


@pytest.fixture(scope="session")
def pgbouncer(service_urls: tuple[str, str]) -> Iterator:
    """A PgBouncer in transaction pooling mode in front of the test server, shared by every
    module marked `pgbouncer`; started on first use."""
    from tests.pgbouncer import PgBouncer, require_pgbouncer

    require_pgbouncer()
    bouncer = PgBouncer(service_urls[0]).start()
    yield bouncer
    bouncer.remove()


@pytest.fixture(scope="module")
def settings(request: pytest.FixtureRequest, service_urls: tuple[str, str], template_db: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for one test module: its own database and its own Redis namespace. A module
    marked `pgbouncer` reaches its database through PgBouncer in transaction pooling mode
    (the database itself is created on the server directly)."""
    admin, redis_url = service_urls
    bouncer = (request.getfixturevalue("pgbouncer")
               if request.node.get_closest_marker("pgbouncer") else None)
    name = f"tr_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_database(admin, name, template=template_db))
    if bouncer is not None:
        url = bouncer.route(url)
    prefix = f"trt-{uuid.uuid4().hex[:10]}"
    logs = tmp_path_factory.mktemp("logs")
    yield Settings.from_env(
        {}, database_url=url, redis_url=redis_url, key_prefix=prefix,
        # Reads without a token: tests that are not about access (test_access.py is) read
        # as before; mutations and event streams still need the token.
        public_reads=True,
        api_token=TEST_TOKEN, log_dir=str(logs), heartbeat_interval=0.2, heartbeat_timeout=3.0,
        reconcile_interval=0.5, cancel_grace=2.0, cancel_poll_interval=0.5, kill_margin=0.5,
        leader_ttl=2.0, lost_message_after=5.0)

    async def cleanup() -> None:
        r = aioredis.from_url(redis_url)
        try:
            async for key in r.scan_iter(match=f"{prefix}*", count=1000):
                await r.delete(key)
        finally:
            await r.aclose()
        await drop_database(admin, name)

    asyncio.run(cleanup())


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Db]:
    database = await Db.connect(settings.database_url, min_size=1, max_size=5)
    yield database
    await database.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator:
    """Starts real worker processes; all of them are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(custom: Settings | None = None, *, concurrency: int = 2,
              wait: bool = True) -> WorkerProcess:
        w = WorkerProcess(custom or settings, concurrency=concurrency,
                          log_path=tmp_path / f"worker-{len(started)}.log")
        started.append(w.start())
        return w.wait_ready() if wait else w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def start_reaper(settings: Settings, tmp_path: Path) -> Iterator:
    """Starts real reaper replicas; all of them are stopped after the test."""
    started: list[ServiceProcess] = []

    def start(custom: Settings | None = None) -> ServiceProcess:
        s = (custom or settings).with_(reaper_metrics_port=0)
        proc = ServiceProcess("services.reaper", s, log_path=tmp_path / f"reaper-{len(started)}.log")
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def private_redis() -> Iterator:
    """A Redis of the test's own, which it may stop and start again."""
    from tests.faults import RedisServer

    server = RedisServer().start()
    yield server
    server.remove()


@pytest.fixture
async def canceller(settings: Settings, db: Db) -> AsyncIterator:
    """The audited cancel path, as the API and taskctl use it."""
    from shared.broker import make_celery
    from shared.cancellation import Canceller

    client = aioredis.from_url(settings.redis_url)
    celery = make_celery(settings)
    yield Canceller(settings, db, client, celery)
    celery.close()
    await client.aclose()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory outside pytest's tmp root: pytest makes that root private (0700) whenever
    another session starts, and the embedded PostgreSQL runs as an unprivileged user that
    must reach its data directory."""
    import shutil

    from tests.faults import scratch_dir

    path = scratch_dir("run")
    yield path
    shutil.rmtree(path, ignore_errors=True)
