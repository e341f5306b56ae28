"""Creating a task: the DB row first, then the Celery message that carries only its ids."""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Celery

from shared.db import Db, Record
from shared.errors import BrokerUnavailable, InvalidKwargs, SubmitError, UnknownActor
from shared.params import KwargsError, validate
from shared.publish import QUEUED_AT_HEADER, Message, direct_capable, publisher_for

# The errors a submission raises live with the others in shared.errors; named here too for
# callers that think of them as submit's.
__all__ = ["BrokerUnavailable", "InvalidKwargs", "Message", "QUEUED_AT_HEADER", "SubmitError",
           "UnknownActor", "check_kwargs", "pending_set", "publish", "publish_many", "start_time",
           "submit"]


def _publish_many(celery: Celery, messages: list[Message]) -> None:
    """Through kombu's blocking client: for a thread."""
    pending = pending_set(celery)
    if pending is not None and messages:
        # Before the messages exist: the lost-message rule never sees a published message
        # missing from the set.
        client, key = pending
        now = time.time()
        client.zadd(key, {str(m.message_id): now for m in messages})
    if len(messages) == 1:
        m = messages[0]
        celery.send_task(m.actor, kwargs={"task_id": str(m.task_id)}, task_id=str(m.message_id),
                         queue=m.queue, eta=m.eta, retry=True, headers=m.headers())
        return
    # One producer (one connection) for all of them, not one round of acquiring per message.
    with celery.producer_or_acquire() as producer:
        for m in messages:
            celery.send_task(m.actor, kwargs={"task_id": str(m.task_id)},
                             task_id=str(m.message_id), queue=m.queue, eta=m.eta, retry=True,
                             headers=m.headers(), producer=producer)


def pending_set(celery: Celery) -> tuple[redis.Redis, str] | None:
    """The set of published, not yet taken message ids (see Keys.pending), for apps made
    by shared.broker.make_celery."""
    key = getattr(celery, "taskreaper_pending_key", None)
    if key is None:
        return None
    client = getattr(celery, "taskreaper_redis", None)
    if client is None:
        client = redis.Redis.from_url(celery.conf.broker_url, socket_timeout=5,
                                      socket_connect_timeout=5)
        celery.taskreaper_redis = client
    return client, key


async def publish(celery: Celery, actor: str, task_id: uuid.UUID, message_id: uuid.UUID,
                  queue: str, eta: datetime | None = None, *,
                  queued_at: datetime | None = None) -> None:
    """Sends one task's Celery message (PUBLISH_MODE: direct, or kombu's client in a thread)."""
    await publish_many(celery, [Message(actor, task_id, message_id, queue, eta, queued_at)])


async def publish_many(celery: Celery, messages: list[Message]) -> None:
    """Many tasks' messages at once (a batch, a resume-all's chunk): direct, in one round
    trip per shared.publish.CHUNK messages; through kombu, one Redis round trip for the set
    of pending ids and one producer for every message, off the event loop."""
    if not messages:
        return
    try:
        if direct_capable(celery):
            await publisher_for(celery).send(messages)
        else:
            await asyncio.get_running_loop().run_in_executor(None, _publish_many, celery,
                                                             messages)
    except Exception as exc:  # kombu and redis raise many kinds on a broken connection
        raise BrokerUnavailable(f"could not enqueue: {exc}") from exc


def check_kwargs(actor: Record, kwargs: Any) -> dict[str, Any]:
    """The arguments as the actor's parameters take them (defaults filled in), or
    InvalidKwargs naming what is wrong with each."""
    try:
        return validate(actor["params"], kwargs if kwargs is not None else {})
    except KwargsError as exc:
        raise InvalidKwargs(exc.problems) from exc


def start_time(countdown: float | None, eta: datetime | None) -> datetime | None:
    return datetime.now(UTC) + timedelta(seconds=countdown) if countdown is not None else eta


# How long a submitting process trusts an actor's catalogue row it read. The catalogue
# changes when a worker of a new release starts; a submission this much later than the
# change is checked as one made this much earlier would have been.
ACTOR_TTL = 1.0


class _Catalogue:
    """The actor rows one Db has read, each for ACTOR_TTL seconds: a submission then costs
    one statement, not two. An unknown actor is asked about every time."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[float, Record]] = {}

    async def get(self, db: Db, name: str) -> Record | None:
        now = time.monotonic()
        kept = self._rows.get(name)
        if kept is not None and now - kept[0] < ACTOR_TTL:
            return kept[1]
        row = await db.get_actor(name)
        if row is None:
            self._rows.pop(name, None)
        else:
            self._rows[name] = (now, row)
        return row


_catalogues: weakref.WeakKeyDictionary[Db, _Catalogue] = weakref.WeakKeyDictionary()


def _catalogue(db: Db) -> _Catalogue:
    found = _catalogues.get(db)
    if found is None:
        found = _catalogues[db] = _Catalogue()
    return found


async def submit(db: Db, celery: Celery, *, actor: str, kwargs: Any, queue: str | None = None,
                 countdown: float | None = None, eta: datetime | None = None,
                 fail_fast: bool | None = None) -> Record:
    """A root task (children go through shared.trees). `fail_fast` (default: the actor's
    option) makes a failed child of this task cancel its siblings."""
    spec = await _catalogue(db).get(db, actor)
    if spec is None:
        raise UnknownActor(actor)
    checked = check_kwargs(spec, kwargs)
    eta = start_time(countdown, eta)
    if fail_fast is None:
        fail_fast = bool((spec["options"] or {}).get("fail_fast"))
    task_id, message_id = uuid.uuid4(), uuid.uuid4()
    row = await db.insert_task(task_id, actor, queue or spec["queue"], checked, message_id, eta,
                               fail_fast=fail_fast)
    try:
        await publish(celery, actor, task_id, message_id, row["queue"], eta,
                      queued_at=row["queued_at"])
    except BrokerUnavailable:
        # Nothing half-made: a task that could not be enqueued does not exist.
        await db.delete_queued_task(task_id)
        raise
    return row
