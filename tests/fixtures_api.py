"""API fixtures: the app built by the same factory production uses, served by pytest-aiohttp,
plus the actor catalogue rows that workers would normally register and tokens of each role.

The module settings (conftest.py) read without a token (PUBLIC_READS); `auth` is the
bootstrap admin's header. Tests about access build their app with public_reads=False."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from aiohttp.test_utils import TestClient

from services.api.app import create_app
from shared.db import Db
from shared.keys import Keys
from shared.params import Range, describe
from shared.settings import Settings
from shared.tokens import Tokens

ApiClient = TestClient


def _echo(ctx: Any, text: str, times: Annotated[int, Range(min=1, max=5)] = 1,
          tags: list | None = None) -> None:
    """Stands in for a worker-side actor: only its signature matters to the API."""


def _crunch(ctx: Any, rows: int, ratio: float = 0.5, dry_run: bool = False) -> None:
    """A second stand-in actor, on its own queue."""


ACTORS: dict[str, tuple[Callable[..., Any], str]] = {
    "echo": (_echo, "default"),
    "crunch": (_crunch, "batch"),
}


async def register_actor(db: Db, name: str, fn: Callable[..., Any], queue: str = "default",
                         options: dict[str, Any] | None = None) -> None:
    """Writes an actor row the way a starting worker does."""
    await db.upsert_actor(name, queue, describe(fn), options or {})


@pytest.fixture
async def actors(db: Db) -> dict[str, str]:
    """Registers the stand-in actors; returns name -> queue."""
    for name, (fn, queue) in ACTORS.items():
        await register_actor(db, name, fn, queue)
    return {name: queue for name, (_, queue) in ACTORS.items()}


@pytest.fixture
async def api(settings: Settings, aiohttp_client: Any) -> ApiClient:
    return await aiohttp_client(create_app(settings, sse_keepalive=0.3))


@pytest.fixture
def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api_token}"}


async def make_token(db: Db, name: str, role: str) -> dict[str, str]:
    """A new token of `role`, as the headers that carry it."""
    new = await Tokens(db).create(name, role, by="test")
    return {"Authorization": f"Bearer {new.secret}"}


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


async def count_tasks(db: Db) -> int:
    return await db.pool.fetchval("SELECT count(*) FROM tasks")


async def set_status(db: Db, task_id: str | uuid.UUID, status: str, **columns: Any) -> None:
    """Moves a row where a worker would have moved it, without running one."""
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, start=3))
    sql = f"UPDATE tasks SET status = $2{', ' + sets if sets else ''} WHERE id = $1"
    await db.pool.execute(sql, uuid.UUID(str(task_id)), status, *columns.values())
