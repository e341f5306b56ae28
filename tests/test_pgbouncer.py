"""Behind PgBouncer in transaction pooling mode: the named queries, the migrations and a task
run by a real worker and reaper, with proof that the connections really are pooled."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest

from devstack.databases import create_database, drop_database
from shared.cancellation import Canceller
from shared.db import Db
from shared.migrate import migrate_url, migration_files
from shared.settings import Settings
from shared.submit import submit
from tests.pgbouncer import PgBouncer
from tests.support import TERMINAL, row_where, wait_for

pytestmark = pytest.mark.pgbouncer


def _database(settings: Settings) -> str:
    return urlsplit(settings.database_url).path.lstrip("/")


async def _fetch_direct(admin_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """One query on a connection of its own, straight to PostgreSQL (not the pooler)."""
    conn = await asyncpg.connect(admin_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _backends(admin_url: str, database: str) -> set[int]:
    """Pids of the sessions open on `database`, as PostgreSQL itself lists them."""
    rows = await _fetch_direct(admin_url, "SELECT pid FROM pg_stat_activity WHERE datname = $1"
                               " AND backend_type = 'client backend'", database)
    return {r["pid"] for r in rows}


async def _only_pgbouncer_on(admin_url: str, database: str, bouncer: PgBouncer) -> set[int]:
    """Waits until every session on `database` is one of PgBouncer's server connections."""
    async def check() -> set[int] | None:
        backends = await _backends(admin_url, database)
        return backends if backends and backends <= bouncer.server_pids() else None

    return await wait_for(check, timeout=5, interval=0.1,
                          what=f"only PgBouncer's sessions on {database}")


async def test_named_queries_run_through_pgbouncer(
        settings: Settings, db: Db, pgbouncer: PgBouncer,
        service_urls: tuple[str, str]) -> None:
    # given the module's settings, which point at the pooler, not at PostgreSQL
    parts = urlsplit(settings.database_url)
    assert (parts.hostname, parts.port) == ("127.0.0.1", pgbouncer.port)
    # when a task goes through its life with the named queries (jsonb in and out included)
    tid, mid = uuid.uuid4(), uuid.uuid4()
    await db.insert_task(tid, "distill", "default", {"chunks": 2, "note": "ü"}, mid, None)
    claimed = await db.claim_task(tid, mid, "w@test", 1, 30)
    assert claimed is not None and claimed.attempt == 1
    assert await db.heartbeat(tid, 1, done=1, failed=0, total=2, current=1,
                              eta_seconds=0.5) is not None
    assert await db.save_result(tid, 1, 0, True, {"digest": "a"})
    assert await db.save_result(tid, 1, 1, True, {"digest": "b"})
    assert await db.finish_task(tid, 1, "succeeded", done=2, failed=0, total=2) == "succeeded"
    # then every answer is right
    row = await db.get_task(tid)
    assert row["status"] == "succeeded" and row["kwargs"] == {"chunks": 2, "note": "ü"}
    assert await db.saved_chunks(tid) == {0, 1}
    assert [r["result"] for r in await db.list_results(tid)] == [{"digest": "a"},
                                                                 {"digest": "b"}]
    assert (await db.counts())["succeeded"] == 1
    # and the pool's connections are PgBouncer's clients, while the only sessions PostgreSQL
    # has on this database are PgBouncer's own
    clients = [c for c in pgbouncer.show("CLIENTS") if c["database"] == _database(settings)]
    assert clients, pgbouncer.show("CLIENTS")
    await _only_pgbouncer_on(service_urls[0], _database(settings), pgbouncer)


async def test_many_clients_share_a_few_server_connections(
        settings: Settings, service_urls: tuple[str, str]) -> None:
    # given a pooler that opens at most two server connections per database, and eight
    # asyncpg connections through it
    small = PgBouncer(service_urls[0], pool_size=2).start()
    try:
        db = await Db.connect(small.url_for(_database(settings)), min_size=8, max_size=8)
        try:
            # when all eight run a statement at once
            async def backend() -> int:
                async with db.pool.acquire() as conn:
                    return await conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.2)")

            pids = await asyncio.gather(*(backend() for _ in range(8)))
            assert await db.get_task(uuid.uuid4()) is None  # and a named query after it
            # then PgBouncer has eight clients, served by at most two server sessions
            name = _database(settings)
            clients = [c for c in small.show("CLIENTS") if c["database"] == name]
            servers = [s for s in small.show("SERVERS") if s["database"] == name]
            assert len(clients) == 8, clients
            assert 1 <= len(servers) <= 2, servers
            assert 1 <= len(set(pids)) <= 2, pids
        finally:
            await db.close()
    finally:
        small.remove()


async def test_concurrent_migrations_through_pgbouncer_apply_each_once(
        pgbouncer: PgBouncer, service_urls: tuple[str, str]) -> None:
    # given an empty database
    admin = service_urls[0]
    name = f"tr_mig_{uuid.uuid4().hex[:10]}"
    await create_database(admin, name, migrated=False)
    try:
        # when four processes migrate it at once through the pooler
        url = pgbouncer.url_for(name)
        runs = await asyncio.wait_for(asyncio.gather(*(migrate_url(url) for _ in range(4))), 30)
        # then every migration was applied exactly once, and no lock outlived its transaction
        applied = sorted(m for run in runs for m in run)
        assert applied == [n for n, _ in migration_files()], runs
        locks = await _fetch_direct(
            admin, "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND d.datname = $1", name)
        assert locks == []
        # and a later run finds nothing to do, without waiting
        assert await asyncio.wait_for(migrate_url(url), 10) == []
    finally:
        await drop_database(admin, name)


async def test_a_task_runs_to_success_with_worker_and_reaper_behind_pgbouncer(
        settings: Settings, db: Db, canceller: Canceller, start_worker, start_reaper,
        pgbouncer: PgBouncer, service_urls: tuple[str, str]) -> None:
    # given a worker and a reaper whose settings point at the pooler
    worker = start_worker()
    reaper = start_reaper()
    # when a distill is submitted
    row = await submit(db, canceller.celery, actor="distill",
                       kwargs={"chunks": 5, "chunk_seconds": 0.05})
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, 30, "terminal")
    # then it succeeds with every chunk saved
    assert final["status"] == "succeeded", dict(final)
    assert await db.saved_chunks(row["id"]) == set(range(5))

    # and the reaper and the pool process that ran it talk to PgBouncer, none to PostgreSQL
    def peers(proc: psutil.Process) -> set[int]:
        try:
            return {c.raddr.port for c in proc.net_connections(kind="tcp") if c.raddr}
        except psutil.NoSuchProcess:
            return set()

    upstream = urlsplit(service_urls[0]).port
    tree = [psutil.Process(worker.pid), *worker.children()]
    for proc in [*tree, psutil.Process(reaper.pid)]:
        assert upstream not in peers(proc), f"{proc} bypasses PgBouncer"

    async def reaper_and_a_pool_process_connected() -> bool:
        return (pgbouncer.port in peers(psutil.Process(reaper.pid))
                and any(pgbouncer.port in peers(p) for p in worker.children()))

    await wait_for(reaper_and_a_pool_process_connected, timeout=5, interval=0.1,
                   what="reaper and pool process connected to PgBouncer")
    await _only_pgbouncer_on(service_urls[0], _database(settings), pgbouncer)
