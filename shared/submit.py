"""Creating a task: the DB row first, then the Celery message that carries only its ids."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery

from shared.db import Db, Record
from shared.params import KwargsError, validate


class SubmitError(Exception):
    code = "bad_request"
    status = 400


class UnknownActor(SubmitError):
    code = "unknown_actor"


class InvalidKwargs(SubmitError):
    code = "invalid_kwargs"

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


class BrokerUnavailable(SubmitError):
    code = "broker_unavailable"
    status = 503


def _publish(celery: Celery, actor: str, task_id: uuid.UUID, message_id: uuid.UUID, queue: str,
             eta: datetime | None) -> None:
    celery.send_task(actor, kwargs={"task_id": str(task_id)}, task_id=str(message_id),
                     queue=queue, eta=eta, retry=True)


async def publish(celery: Celery, actor: str, task_id: uuid.UUID, message_id: uuid.UUID,
                  queue: str, eta: datetime | None = None) -> None:
    """Sends the Celery message off the event loop: kombu's client is blocking."""
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, _publish, celery, actor, task_id, message_id, queue, eta)
    except Exception as exc:  # kombu raises many kinds on a broken connection
        raise BrokerUnavailable(f"could not enqueue: {exc}") from exc


async def submit(db: Db, celery: Celery, *, actor: str, kwargs: Any, queue: str | None = None,
                 countdown: float | None = None, eta: datetime | None = None) -> Record:
    spec = await db.get_actor(actor)
    if spec is None:
        raise UnknownActor(f"no actor named {actor!r}")
    try:
        checked = validate(spec["params"], kwargs if kwargs is not None else {})
    except KwargsError as exc:
        raise InvalidKwargs(exc.problems) from exc
    if countdown is not None:
        eta = datetime.now(UTC) + timedelta(seconds=countdown)
    task_id, message_id = uuid.uuid4(), uuid.uuid4()
    row = await db.insert_task(task_id, actor, queue or spec["queue"], checked, message_id, eta)
    try:
        await publish(celery, actor, task_id, message_id, row["queue"], eta)
    except BrokerUnavailable:
        # Nothing half-made: a task that could not be enqueued does not exist.
        await db.delete_queued_task(task_id)
        raise
    return row
