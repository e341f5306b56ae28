"""Applies the SQL files in shared/migrations once each, in order, under an advisory lock
held by each migration's own transaction."""

from __future__ import annotations

import asyncio
from importlib import resources

import asyncpg
import structlog

from shared.db import SERVER_SETTINGS

log = structlog.get_logger("migrate")

_LOCK_ID = 0x7A5C_2EA9  # any constant shared by every process that migrates


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("shared") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text()) for name in names]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Returns the names of the migrations applied by this call.

    Each migration is one transaction that first takes a transaction-scoped advisory lock and
    then looks at what is still to do, so concurrent callers apply every migration exactly once.
    Nothing outlives a transaction, which keeps this safe behind PgBouncer in transaction mode:
    a session-level lock would stay on whichever server connection took it.
    """
    applied: list[str] = []
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            pending = [(name, sql) for name, sql in migration_files() if name not in done]
            if not pending:
                return applied
            name, sql = pending[0]
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
        applied.append(name)
        log.info("migrate.applied", migration=name)


async def migrate_url(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url, statement_cache_size=0,
                                 server_settings=SERVER_SETTINGS)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def main() -> None:
    from shared.logs import configure_logging
    from shared.settings import Settings

    settings = Settings.from_env()
    configure_logging(settings, "app")
    applied = asyncio.run(migrate_url(settings.database_url))
    print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")


if __name__ == "__main__":
    main()
