"""A cancel, a cancel-all or a resume owns all its effects, whoever asks for it.

The dashboard's live stream (`GET /api/v1/events`) relays the events channel; an operator's
`taskctl cancel` must reach it as the API's own cancel does, not wait for the next poll."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.cancellation import Canceller
from shared.db import Db
from shared.errors import TaskNotFound
from shared.keys import Keys
from shared.settings import Settings
from shared.submit import submit
from tests.test_ctl_helpers import arun_ctl, publish_actors


class Events:
    """What the events channel carried while a test watched it."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    async def next(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next event of `kind`, skipping others (a worker or reaper may speak too)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            message = await self.pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            event = json.loads(message["data"])
            if event.get("type") == kind:
                return event
        raise AssertionError(f"no {kind} event on the events channel")

    async def all(self, quiet: float = 0.5) -> list[dict[str, Any]]:
        """Everything published until the channel stays quiet for `quiet` seconds."""
        loop = asyncio.get_running_loop()
        out, last = [], loop.time()
        # None also stands for a subscription notice: only the time passed says "quiet".
        while loop.time() - last < quiet:
            message = await self.pubsub.get_message(timeout=0.1)
            if message is not None:
                out.append(json.loads(message["data"]))
                last = loop.time()
        return out


@asynccontextmanager
async def watching(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[Events]:
    channel = Keys(settings.key_prefix).events_channel
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    # Subscribed for certain before anything is published: a missed event would pass unseen.
    while (await redis.pubsub_numsub(channel))[0][1] < 1:
        await asyncio.sleep(0.01)
    try:
        yield Events(pubsub)
    finally:
        await pubsub.aclose()


@pytest.fixture
async def catalogue(db: Db) -> None:
    await publish_actors(db)


async def _queued(canceller: Canceller, db: Db) -> uuid.UUID:
    row = await submit(db, canceller.celery, actor="distill", kwargs={"chunks": 2},
                       queue="parked")
    return row["id"]


def _without_time(event: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(event.pop("at"), float)
    return event


async def test_a_cancel_from_taskctl_reaches_the_event_stream(
        settings: Settings, db: Db, redis: aioredis.Redis, canceller: Canceller,
        catalogue: None) -> None:
    # given a queued task and a watcher of the events channel
    task_id = await _queued(canceller, db)
    async with watching(redis, settings) as events:
        # when an operator cancels it from the command line
        out = await arun_ctl(settings, "cancel", str(task_id), "--reason", "wrong input")
        assert out.returncode == 0, out.stderr

        # then the change is published, in the shape the API always published it
        event = _without_time(await events.next("task.cancel_requested"))
    row = await db.get_task(task_id)
    assert row is not None and row["cancel_by"].startswith("taskctl:")
    assert event == {"type": "task.cancel_requested", "task_id": str(task_id),
                     "status": "cancelled", "by": row["cancel_by"], "forced": False}


async def test_a_resume_from_taskctl_reaches_the_event_stream(
        settings: Settings, db: Db, redis: aioredis.Redis, canceller: Canceller,
        catalogue: None) -> None:
    # given a cancelled task
    task_id = await _queued(canceller, db)
    await canceller.cancel(task_id, by="test")
    async with watching(redis, settings) as events:
        # when an operator resumes it from the command line
        out = await arun_ctl(settings, "resume", str(task_id))
        assert out.returncode == 0, out.stderr

        # then
        event = _without_time(await events.next("task.resumed"))
    assert event["by"].startswith("taskctl:")
    assert event == {"type": "task.resumed", "task_id": str(task_id), "status": "queued",
                     "by": event["by"]}


async def test_a_cancel_all_from_taskctl_reaches_the_event_stream(
        settings: Settings, db: Db, redis: aioredis.Redis, canceller: Canceller,
        catalogue: None) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        await submit(db, canceller.celery, actor="distill", kwargs={"chunks": 2}, queue=queue)
    async with watching(redis, settings) as events:
        out = await arun_ctl(settings, "cancel-all", "--queue", queue, "--force")
        assert out.returncode == 0, out.stderr

        event = _without_time(await events.next("tasks.cancel_all"))
    assert event["by"].startswith("taskctl:")
    assert event == {"type": "tasks.cancel_all", "by": event["by"], "forced": True,
                     "actor": None, "queue": queue, "cancelled": 2, "cancelling": 0,
                     "hastened": 0}


async def test_a_cancel_that_changes_nothing_publishes_nothing(
        settings: Settings, db: Db, redis: aioredis.Redis, canceller: Canceller,
        catalogue: None) -> None:
    task_id = await _queued(canceller, db)
    async with watching(redis, settings) as events:
        first = await canceller.cancel(task_id, by="test", force=True)
        again = await canceller.cancel(task_id, by="test", force=True)
        published = await events.all()

    assert first.changed and not again.changed
    assert [e["type"] for e in published] == ["task.cancel_requested"]
    assert published[0]["forced"] is True and published[0]["by"] == "test"


async def test_an_unknown_task_is_task_not_found(canceller: Canceller) -> None:
    missing = uuid.uuid4()
    with pytest.raises(TaskNotFound) as cancel:
        await canceller.cancel(missing, by="test")
    with pytest.raises(TaskNotFound) as resume:
        await canceller.resume(missing, by="test")
    assert cancel.value.task_id == resume.value.task_id == missing
    assert not isinstance(cancel.value, KeyError)
