"""The direct publish path (PUBLISH_MODE=direct) against `celery.send_task` (PUBLISH_MODE=kombu):
the same message in Redis, the same `task-sent` event, and the same run on a real worker."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from celery import Celery
from celery.utils.nodenames import anon_nodename

from shared.broker import make_celery
from shared.db import Db
from shared.keys import Keys
from shared.publish import CHUNK, QUEUED_AT_HEADER, Message
from shared.publish_wire import Writer
from shared.queues import queue_lists, unacked_key
from shared.settings import Settings
from shared.submit import (
    BrokerUnavailable,
    UnknownActor,
    publish,
    publish_many,
    start_time,
    submit,
)
from tests.support import TERMINAL, row_where, wait_for

CUSTOM_QUEUE = "publish-custom"
# What differs between any two messages Celery sends: a fresh delivery tag, and the
# reply-to address of the publishing thread (kombu's path publishes from a pool thread).
PER_SEND = {"delivery_tag", "reply_to"}
PER_EVENT = {"timestamp", "clock"}


def _mode(settings: Settings, mode: str, tag: str = "") -> Settings:
    # A key prefix per mode (and test): each publishes into queues of its own.
    return settings.with_(publish_mode=mode, key_prefix=f"{settings.key_prefix}-{mode}{tag}")


@pytest.fixture
async def apps(settings: Settings) -> AsyncIterator[dict[str, Celery]]:
    made = {mode: make_celery(_mode(settings, mode)) for mode in ("kombu", "direct")}
    yield made
    for app in made.values():
        app.close()


def _decoded(raw: bytes | str) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def _without(message: dict[str, Any], props: set[str], body: set[str] = frozenset()
             ) -> dict[str, Any]:
    out = dict(message)
    out["properties"] = {k: v for k, v in message["properties"].items() if k not in props}
    if isinstance(message["body"], dict):
        out["body"] = {k: v for k, v in message["body"].items() if k not in body}
    return out


CASES = {
    "plain": {"queue": "default", "countdown": None},
    "countdown": {"queue": "default", "countdown": 30.0},
    "custom queue": {"queue": CUSTOM_QUEUE, "countdown": None},
}


@pytest.mark.unit
@pytest.mark.parametrize("case", list(CASES))
def test_the_written_text_is_kombus_own_but_for_the_delivery_tag(case: str) -> None:
    # given a message Celery and kombu prepared (kombu's in-memory transport keeps it as the
    # Redis transport would serialize it)
    app = Celery("publish-unit", broker="memory://", set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    task_id, message_id = uuid.uuid4(), uuid.uuid4()
    queue, eta = CASES[case]["queue"], start_time(CASES[case]["countdown"], None)
    headers = {QUEUED_AT_HEADER: datetime.now(UTC).timestamp()}
    try:
        app.send_task("distill", kwargs={"task_id": str(task_id)}, task_id=str(message_id),
                      queue=queue, eta=eta, headers=headers)
        with app.connection_for_write() as conn:
            theirs = conn.default_channel._get(queue)
        # when the same message is written without them
        ours, _ = Writer(reply_to=app.thread_oid, origin=anon_nodename()).message(
            "distill", message_id, task_id, queue, eta=eta, headers=headers)
    finally:
        app.close()
    # then the text is kombu's, up to the delivery tag every message draws afresh
    tag = json.loads(ours)["properties"]["delivery_tag"]
    assert tag != theirs["properties"]["delivery_tag"]
    theirs["properties"]["delivery_tag"] = tag
    assert ours == json.dumps(theirs)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_direct_message_is_the_message_send_task_writes(
        settings: Settings, apps: dict[str, Celery], redis: aioredis.Redis, case: str) -> None:
    # given the same task published both ways, each into a key prefix of its own
    queue, countdown = CASES[case]["queue"], CASES[case]["countdown"]
    task_id, message_id = uuid.uuid4(), uuid.uuid4()
    eta = start_time(countdown, None)
    queued_at = datetime.now(UTC)
    found: dict[str, dict[str, Any]] = {}
    events: dict[str, dict[str, Any]] = {}
    for mode, app in apps.items():
        keys = Keys(_mode(settings, mode).key_prefix)
        listener = redis.pubsub()
        await listener.psubscribe(f"{keys.celery_prefix}*celeryev*")
        assert (await listener.get_message(timeout=2.0) or {}).get("type") == "psubscribe"
        # when it is published
        await publish(app, "distill", task_id, message_id, queue, eta, queued_at=queued_at)
        # then it waits in the queue's list, its id in the set of pending message ids
        [key] = [k for k in queue_lists(keys, queue) if await redis.llen(k)]
        assert key == keys.celery_key(queue)
        found[mode] = _decoded(await redis.rpop(key))
        assert await redis.zscore(keys.pending, str(message_id)) is not None
        event = await listener.get_message(ignore_subscribe_messages=True, timeout=2.0)
        assert event is not None, f"{mode}: no task-sent event"
        assert event["channel"] == f"{keys.celery_prefix}/0.celeryev/task.sent"
        events[mode] = _decoded(event["data"])
        await listener.aclose()
    # and both ways wrote the same message and the same event, apart from what differs
    # between any two sends
    assert _without(found["direct"], PER_SEND) == _without(found["kombu"], PER_SEND)
    direct = found["direct"]
    assert direct["headers"]["id"] == str(message_id)
    assert direct["headers"]["eta"] == (eta.isoformat() if eta else None)
    assert direct["headers"]["taskreaper_queued_at"] == queued_at.timestamp()
    assert direct["body"][1] == {"task_id": str(task_id)}
    assert direct["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}
    assert (_without(events["direct"], PER_SEND, PER_EVENT)
            == _without(events["kombu"], PER_SEND, PER_EVENT))
    assert events["direct"]["body"]["type"] == "task-sent"


async def test_kombu_bindings_name_the_queues_direct_messages_went_to(
        settings: Settings, apps: dict[str, Celery], redis: aioredis.Redis) -> None:
    # given a message of a queue published both ways
    for app in apps.values():
        await publish(app, "distill", uuid.uuid4(), uuid.uuid4(), CUSTOM_QUEUE)
    # then kombu's binding tables, which taskctl reads to find queues, say the same
    tables = {}
    for mode in apps:
        keys = Keys(_mode(settings, mode).key_prefix)
        tables[mode] = {name: await redis.smembers(keys.celery_key(name % CUSTOM_QUEUE))
                        for name in ("_kombu.binding.%s", "_kombu.binding_permanent.%s")}
    assert tables["direct"] == tables["kombu"]
    assert all(members for members in tables["direct"].values())


async def test_a_batch_larger_than_a_chunk_is_published_whole(
        settings: Settings, apps: dict[str, Celery], redis: aioredis.Redis) -> None:
    # given more messages than one transaction carries
    n = CHUNK * 2 + 17
    messages = [Message("distill", uuid.uuid4(), uuid.uuid4(), "publish-batch") for _ in range(n)]
    # when they are published directly
    await publish_many(apps["direct"], messages)
    # then every one waits in the queue, in order, and every id is pending
    keys = Keys(_mode(settings, "direct").key_prefix)
    raw = await redis.lrange(keys.celery_key("publish-batch"), 0, -1)
    assert [_decoded(r)["headers"]["id"] for r in reversed(raw)] == [
        str(m.message_id) for m in messages]
    assert await redis.zcard(keys.pending) >= n


async def test_an_unreachable_broker_is_broker_unavailable(settings: Settings) -> None:
    # given an app whose broker nothing listens on
    app = make_celery(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    try:
        # when a message is published directly, then the submit path's error is raised
        with pytest.raises(BrokerUnavailable):
            await publish(app, "distill", uuid.uuid4(), uuid.uuid4(), "default")
    finally:
        app.close()


async def test_each_event_loop_has_a_publisher_and_closing_the_app_closes_them(
        settings: Settings) -> None:
    # given an app that published from this loop and from a loop on another thread
    app = make_celery(_mode(settings, "direct"))
    await publish(app, "distill", uuid.uuid4(), uuid.uuid4(), "publish-loops")
    await asyncio.to_thread(asyncio.run, publish(app, "distill", uuid.uuid4(), uuid.uuid4(),
                                                 "publish-loops"))
    table = app.__dict__["taskreaper_publishers"]
    # then the closed loop's publisher is dropped on the next use, this loop's is kept
    await publish(app, "distill", uuid.uuid4(), uuid.uuid4(), "publish-loops")
    assert len(table) == 1
    [(_, publisher)] = table.values()
    pool = publisher.client.connection_pool
    assert any(c.is_connected for c in pool._available_connections)
    # and closing the app closes this loop's connections
    app.close()
    await asyncio.sleep(0.05)
    assert "taskreaper_publishers" not in app.__dict__
    assert not any(c.is_connected for c in pool._available_connections)


# -- the same tasks run on a real worker, published either way --------------------------------

async def _run(db: Db, app: Celery, case: str) -> tuple[Any, datetime]:
    sent_at = datetime.now(UTC)
    row = await submit(db, app, actor="distill", queue=CASES[case]["queue"],
                       kwargs={"chunks": 2, "chunk_seconds": 0.01},
                       countdown=2.0 if CASES[case]["countdown"] else None)
    return row, sent_at


async def test_direct_and_kombu_messages_run_alike_on_a_real_worker(
        settings: Settings, db: Db, redis: aioredis.Redis, start_worker: Any) -> None:
    # given a worker of each mode's deployment that also consumes the custom queue
    apps = {}
    for mode in ("kombu", "direct"):
        s = _mode(settings, mode, "-run").with_(worker_queues=CUSTOM_QUEUE)
        start_worker(s)
        apps[mode] = make_celery(s)
    try:
        # when a plain, a countdown and a custom-queue task are submitted each way
        sent = {(mode, case): await _run(db, app, case)
                for mode, app in apps.items() for case in CASES}
        # then each runs once to success, the countdown one no earlier than its ETA
        for (mode, case), (row, sent_at) in sent.items():
            final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, 30,
                                    f"{mode} {case} task to end")
            assert (final["status"], final["attempt"], final["done"]) == ("succeeded", 1, 2), (
                mode, case, dict(final))
            assert final["queue"] == CASES[case]["queue"]
            if CASES[case]["countdown"]:
                assert final["started_at"] >= sent_at + timedelta(seconds=1.9), (mode, case)
        # and each deployment's broker is left as the other's: nothing queued, nothing
        # unacknowledged, no id pending
        for mode in apps:
            keys = Keys(_mode(settings, mode, "-run").key_prefix)
            for queue in ("default", CUSTOM_QUEUE):
                assert not [k for k in queue_lists(keys, queue) if await redis.llen(k)]

            async def settled(keys: Keys = keys) -> bool:
                return (await redis.hlen(unacked_key(keys)) == 0
                        and await redis.zcard(keys.pending) == 0)

            await wait_for(settled, timeout=5, what=f"{mode}: acknowledged and not pending")
    finally:
        for app in apps.values():
            app.close()


# -- the submission around the message --------------------------------------------------------

async def test_a_submission_reads_the_actor_row_once_a_second_and_an_unknown_actor_each_time(
        settings: Settings, db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    # given an actor in the catalogue and a Db whose catalogue reads are counted
    actor = f"pub{uuid.uuid4().hex[:8]}"
    await db.upsert_actor(actor, "publish-parked", {}, {})
    reads: list[str] = []
    get_actor = db.get_actor

    async def counted(name: str) -> Any:
        reads.append(name)
        return await get_actor(name)

    monkeypatch.setattr(db, "get_actor", counted)
    app = make_celery(_mode(settings, "direct"))
    try:
        # when it is submitted three times in a row
        rows = [await submit(db, app, actor=actor, kwargs={}) for _ in range(3)]
        # then its row was read once, and each task went to its queue
        assert reads == [actor]
        assert {r["queue"] for r in rows} == {"publish-parked"}
        # and once the row is older than the catalogue's time to live, it is read again
        monkeypatch.setattr("shared.submit.ACTOR_TTL", 0.0)
        await submit(db, app, actor=actor, kwargs={})
        assert reads == [actor, actor]
        # and an actor that is not there is asked about every time
        for _ in range(2):
            with pytest.raises(UnknownActor):
                await submit(db, app, actor="no-such-actor", kwargs={})
        assert reads[2:] == ["no-such-actor", "no-such-actor"]
    finally:
        app.close()
