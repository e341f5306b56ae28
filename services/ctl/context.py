"""What every taskctl command works with: settings, the DB, Redis, a Celery client."""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import redis.asyncio as aioredis
from celery import Celery

from services.ctl.errors import bad_input, failed
from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings


@dataclass
class CtlContext:
    settings: Settings
    db: Db
    redis: aioredis.Redis
    celery: Celery

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)

    @property
    def hostname(self) -> str:
        return self.settings.hostname

    @property
    def actor(self) -> str:
        """Who the audit trail names for what this command does."""
        return f"taskctl:{operator_name()}@{self.hostname}"

    def canceller(self) -> Canceller:
        return Canceller(self.settings, self.db, self.redis, self.celery)


def operator_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return os.environ.get("USER") or str(os.getuid())


@asynccontextmanager
async def open_context(settings: Settings) -> AsyncIterator[CtlContext]:
    if not settings.database_url or not settings.redis_url:
        raise bad_input("DATABASE_URL and REDIS_URL must be set "
                        "(the same values the API, reaper and workers use)")
    try:
        db = await Db.connect(settings.database_url, min_size=1, max_size=2)
    except Exception as exc:  # asyncpg and OS errors alike: one clear line
        raise failed(f"cannot reach PostgreSQL: {exc}") from exc
    redis = aioredis.from_url(settings.redis_url, decode_responses=True,
                              socket_connect_timeout=3, socket_timeout=10)
    celery = make_celery(settings, "taskctl")
    try:
        try:
            await redis.ping()
        except Exception as exc:
            raise failed(f"cannot reach Redis: {exc}") from exc
        yield CtlContext(settings=settings, db=db, redis=redis, celery=celery)
    finally:
        celery.close()
        with suppress(Exception):
            await redis.aclose()
        await db.close()


def parse_task_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise bad_input(f"{value!r} is not a task id (expected a UUID)") from exc
