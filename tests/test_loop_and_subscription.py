"""The pieces the sidecar and the guardian share: the loop on its thread, the one DB
connection, and the subscription that outlives any Redis failure."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.worker import db_connection
from services.worker.db_connection import OneConnection
from services.worker.loop_thread import LoopThread
from services.worker.subscription import FIRST_RETRY, MAX_RETRY, Subscription
from shared.redis_client import connect
from tests.support import wait_for


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


class FakeRedis:
    """Just enough of a Redis client's pub/sub: it refuses the next few connections when
    told to, and can drop the live one."""

    def __init__(self, *, refuse: int = 0) -> None:
        self.refuse = refuse
        self.sessions = 0  # connections that subscribed
        self.subscribed: set[str] = set()
        self.live: FakePubSub | None = None
        # Held up between receiving a SUBSCRIBE and answering it, when set.
        self.answer_subscribe: asyncio.Event | None = None

    def pubsub(self, **_: Any) -> FakePubSub:
        return FakePubSub(self)

    def publish(self, channel: str, data: bytes) -> None:
        if self.live is not None and channel in self.subscribed:
            self.live.inbox.put_nowait({"type": "message", "channel": channel, "data": data})

    def drop(self) -> None:
        assert self.live is not None
        self.live.inbox.put_nowait(RedisConnectionError("Connection reset by peer"))
        self.live, self.subscribed = None, set()


class FakePubSub:
    def __init__(self, server: FakeRedis) -> None:
        self.server = server
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def __aenter__(self) -> FakePubSub:
        return self

    async def __aexit__(self, *_: Any) -> None:
        if self.server.live is self:
            self.server.live, self.server.subscribed = None, set()

    async def subscribe(self, *channels: str) -> None:
        if self.server.live is not self:
            if self.server.refuse > 0:
                self.server.refuse -= 1
                raise RedisConnectionError("Connection refused")
            if self.server.answer_subscribe is not None:
                await self.server.answer_subscribe.wait()
            self.server.live = self
            self.server.sessions += 1
        self.server.subscribed.update(channels)

    async def unsubscribe(self, *channels: str) -> None:
        self.server.subscribed.difference_update(channels)

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self.inbox.get()
            if isinstance(item, Exception):
                raise item
            yield item


async def until(check: Callable[[], Any], what: str) -> None:
    async def poll() -> Any:
        return check()

    await wait_for(poll, timeout=5, interval=0.001, what=what)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Subscription], None]]:
    tasks: list[asyncio.Task[None]] = []
    yield lambda sub: tasks.append(asyncio.create_task(sub.run()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.unit
async def test_a_subscription_that_breaks_subscribes_again_waiting_longer_each_time(
        running: Callable[[Subscription], None]) -> None:
    # given a server that refuses the first three connections
    server, got, log = FakeRedis(refuse=3), [], RecordingLog()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    sub = Subscription(server, ["cancel"], got.append, log=log, error_event="x.listen_error",
                       sleep=sleep)
    # when the subscription runs
    running(sub)
    # then it gets through on the fourth try, waiting longer after each refusal
    await until(lambda: sub.connected, "the subscription to connect")
    assert waits == [FIRST_RETRY, FIRST_RETRY * 2, FIRST_RETRY * 4]
    assert [line[0] for line in log.lines] == ["x.listen_error"] * 3
    server.publish("cancel", b"one")
    await until(lambda: got == [b"one"], "the first message")
    # and when the live connection drops, it subscribes again at once (first wait only)
    server.drop()
    await until(lambda: server.sessions == 2, "a second session")
    assert waits[3:] == [FIRST_RETRY]
    server.publish("cancel", b"two")
    await until(lambda: got == [b"one", b"two"], "the message sent after the drop")


@pytest.mark.unit
async def test_the_wait_between_attempts_stops_growing_at_its_ceiling(
        running: Callable[[Subscription], None]) -> None:
    # given a server that refuses many connections in a row
    server, waits = FakeRedis(refuse=12), []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    # when a subscription keeps trying
    sub = Subscription(server, ["cancel"], lambda _: None, log=RecordingLog(),
                       error_event="x.listen_error", sleep=sleep)
    running(sub)
    await until(lambda: sub.connected, "the subscription to connect")
    # then no wait is longer than the ceiling, which it reaches
    assert len(waits) == 12 and max(waits) == MAX_RETRY == waits[-1]


@pytest.mark.unit
async def test_channels_added_or_dropped_while_down_are_what_the_reconnect_subscribes(
        running: Callable[[Subscription], None]) -> None:
    # given a subscription to the fleet channel and one task's channel, whose server drops it
    server, got = FakeRedis(), []
    sub = Subscription(server, ["cancel"], got.append, log=RecordingLog(),
                       error_event="x.listen_error")
    running(sub)
    await until(lambda: sub.connected, "the subscription to connect")
    await sub.add("cancel:task-a")
    server.refuse = 2
    server.drop()
    await until(lambda: not sub.connected, "the subscription to notice the drop")
    # when, while it is down, task a is forgotten and task b watched
    await sub.discard("cancel:task-a")
    await sub.add("cancel:task-b")
    # then the reconnect subscribes to exactly the channels wanted now
    await until(lambda: server.sessions == 2, "a second session")
    assert server.subscribed == {"cancel", "cancel:task-b"}
    server.publish("cancel:task-b", b"b")
    await until(lambda: got == [b"b"], "task b's message")


@pytest.mark.unit
async def test_a_channel_added_while_the_subscribe_is_under_way_is_not_lost(
        running: Callable[[Subscription], None]) -> None:
    # given a server slow to answer the subscribe
    server = FakeRedis()
    server.answer_subscribe = asyncio.Event()
    sub = Subscription(server, ["cancel"], lambda _: None, log=RecordingLog(),
                       error_event="x.listen_error")
    running(sub)
    await asyncio.sleep(0.01)
    # when a task's channel is added before the answer comes
    await sub.add("cancel:task-a")
    server.answer_subscribe.set()
    # then it is subscribed all the same
    await until(lambda: "cancel:task-a" in server.subscribed, "task a's channel subscribed")


@pytest.mark.integration
async def test_a_subscription_outlives_a_restart_of_a_real_redis(
        private_redis: Any, running: Callable[[Subscription], None]) -> None:
    # given a subscription to a Redis of the test's own
    got, log = [], RecordingLog()
    sub = Subscription(connect(private_redis.url, socket_timeout=None), ["cancel"], got.append,
                       log=log, error_event="x.listen_error")
    running(sub)
    publisher = aioredis.from_url(private_redis.url)

    async def delivered(data: bytes) -> bool:
        try:
            await publisher.publish("cancel", data)
        except (OSError, RedisConnectionError):
            return False
        await asyncio.sleep(0.05)
        return data in got

    try:
        await wait_for(lambda: delivered(b"before"), timeout=5, what="a message before")
        # when the server goes away for a while, then comes back (empty, as after a restart)
        private_redis.stop()
        await until(lambda: log.lines, "the subscription to notice the server gone")
        await asyncio.sleep(1.0)
        private_redis.start()
        # then messages published after the restart arrive, through the reconnect
        await wait_for(lambda: delivered(b"after"), timeout=10, what="a message after")
        assert all(event == "x.listen_error" for event, _ in log.lines)
    finally:
        await publisher.aclose()


@pytest.mark.unit
def test_the_loop_thread_runs_what_other_threads_hand_it() -> None:
    # given a started loop thread
    thread = LoopThread("test-loop")
    set_up_on: list[str] = []
    thread.start(lambda: set_up_on.append(threading.current_thread().name))
    try:
        # when a coroutine is handed to it from this thread
        async def where() -> str:
            return threading.current_thread().name

        # then it runs on the loop's own thread, after the setup ran there
        assert thread.call(where()) == "test-loop"
        assert set_up_on == ["test-loop"]
    finally:
        thread.stop()
    assert thread.loop.is_closed()


@pytest.mark.unit
def test_a_call_that_times_out_cancels_its_work() -> None:
    # given a loop thread and work that takes longer than the caller waits
    thread = LoopThread("test-loop")
    thread.start()
    landed: list[str] = []

    async def slow() -> None:
        await asyncio.sleep(0.5)
        landed.append("late")

    try:
        # when the caller gives up
        with pytest.raises(TimeoutError):
            thread.call(slow(), timeout=0.05)
        time.sleep(0.7)
        # then the work did not land later, unseen
        assert landed == []
    finally:
        thread.stop()


@pytest.mark.unit
def test_spawned_work_is_held_until_it_ends() -> None:
    # given a loop thread
    thread = LoopThread("test-loop")
    thread.start()
    done = threading.Event()

    async def work() -> None:
        await asyncio.sleep(0.2)
        done.set()

    async def start_and_forget() -> None:
        thread.spawn(work())

    try:
        # when work is spawned and nobody keeps a reference to it, and memory is collected
        thread.call(start_and_forget())
        import gc

        gc.collect()
        # then it still runs to its end
        assert done.wait(2)
    finally:
        thread.stop()


@pytest.mark.unit
async def test_callers_asking_at_once_share_one_db_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # given a DB slow to accept a connection
    opened: list[object] = []

    async def slow_connect(url: str, **_: Any) -> object:
        await asyncio.sleep(0.05)
        opened.append(object())
        return opened[-1]

    monkeypatch.setattr(db_connection.Db, "connect", slow_connect)
    connection = OneConnection("postgresql://nowhere/db")
    # when five coroutines ask for the connection at the same moment
    got = await asyncio.gather(*(connection.get() for _ in range(5)))
    # then one connection was opened, and every caller has it
    assert len(opened) == 1 and all(g is opened[0] for g in got)
