"""Creating and dropping whole databases on a server: for tests, benchmarks and tools that
need a database of their own beside others on the same PostgreSQL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.migrate import migrate_url


def database_url(admin_url: str, name: str) -> str:
    """The same server and credentials, another database."""
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


async def create_database(admin_url: str, name: str, *, template: str | None = None,
                          migrated: bool = True) -> str:
    """Creates `name` (from `template` if given), migrates it unless copied, returns its URL."""
    conn = await asyncpg.connect(admin_url)
    try:
        copy = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await conn.close()
    url = database_url(admin_url, name)
    if migrated and not template:
        await migrate_url(url)
    return url


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
