"""A worker process's one DB connection, and what a DB outage looks like from there."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.db import Db

# One DB call of the sidecar on behalf of a task; past it the DB counts as unreachable.
DB_CALL_TIMEOUT = 5.0
# What a DB outage looks like from here; anything else is a real error.
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.CannotConnectNowError)


class OneConnection:
    """At most one DB connection per process, opened on first use.

    Coroutines that ask at the same moment (a heartbeat and a checkpoint, a poll and a
    kill) wait for the same connection instead of opening one each."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._db: Db | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Db:
        async with self._lock:
            if self._db is None:
                self._db = await Db.connect(self._url, min_size=0, max_size=1)
            return self._db

    async def close(self) -> None:
        async with self._lock:
            if self._db is not None:
                await self._db.close()
                self._db = None
