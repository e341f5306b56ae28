"""The pool, the named queries, and what every part of `Db` stands on.

Works behind PgBouncer in transaction mode: no statement cache, no session state.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from typing import Self

import asyncpg

Record = asyncpg.Record

SERVER_SETTINGS = {"client_encoding": "UTF8"}


@cache
def queries() -> dict[str, str]:
    """Every `-- name:` statement of the .sql files in shared/sql; a name used twice is an
    error, not a silent override."""
    found: dict[str, str] = {}
    folder = resources.files("shared") / "sql"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = re.split(r"^-- name: (\w+)\n", entry.read_text(), flags=re.MULTILINE)
        for name, sql in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise ValueError(f"query {name} is defined twice (again in {entry.name})")
            found[name] = sql.strip()
    return found


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: no code here keeps session state (PgBouncer-safe), and
    the default reset would cost a round trip on every use of the pool."""


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 10,
                      timeout: float = 5.0) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, statement_cache_size=0,
        init=_init_connection, reset=_keep_session, timeout=timeout, command_timeout=30,
        # Spelled as the server reports it: PgBouncer compares the two and would otherwise
        # send a SET before every transaction it hands over, doubling the server's work.
        server_settings=SERVER_SETTINGS,
    )


class DbBase:
    """A pool and the queries by name; the methods live in one mixin per concern."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.q = queries()

    @classmethod
    async def connect(cls, database_url: str, *, min_size: int = 1, max_size: int = 10) -> Self:
        return cls(await create_pool(database_url, min_size=min_size, max_size=max_size))

    async def close(self) -> None:
        await self.pool.close()

    def terminate(self) -> None:
        """Drops every connection at once: for a shutdown that a graceful close outlasted."""
        self.pool.terminate()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def ping(self) -> None:
        await self.pool.fetchval(self.q["ping"])
