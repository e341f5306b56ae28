"""The direct publish path: task messages written to the broker's Redis from asyncio, the way
kombu's Redis transport writes them, many in one round trip.

kombu's client is blocking, so the other path (`PUBLISH_MODE=kombu`) sends each message
from a thread; here one script call carries, for up to CHUNK messages: the ZADD to the set
of pending message ids (before any message exists, as the lost-message rule needs),
kombu's queue bindings the first time this process names a queue, one LPUSH per message
and, when Celery's task events are on, its `task-sent` event. A script runs whole or not
at all, so a chunk is in the broker whole or not at all, and answers once (a MULTI would
answer every command twice).

A redis.asyncio client belongs to the event loop it was made on, so each loop (the API's,
each pool process's sidecar loop, the reaper's) gets a publisher of its own, kept on the
Celery app and closed with it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.transport.redis import Channel

from shared.publish_wire import EVENT_EXCHANGE, SENT_ROUTING_KEY, Writer
from shared.redis_client import connect

# The message header that carries the row's `queued_at` (epoch seconds, DB clock): the
# reaper removes from Redis the messages a cancel fence covers without asking the DB.
QUEUED_AT_HEADER = "taskreaper_queued_at"
# Messages per script call: a resume-all's batch must not hold Redis for long.
CHUNK = 1000
# Broker URLs this path can write to; anything else (sentinel, a socket URL kombu names
# its own way) goes through kombu.
DIRECT_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class Message:
    """One task's message, as `publish` sends it."""

    actor: str
    task_id: uuid.UUID
    message_id: uuid.UUID
    queue: str
    eta: datetime | None = None
    queued_at: datetime | None = None

    def headers(self) -> dict[str, Any] | None:
        return {QUEUED_AT_HEADER: self.queued_at.timestamp()} if self.queued_at is not None else None


@dataclass(frozen=True)
class Route:
    """Where kombu's Redis transport keeps an app's queues and publishes its events."""

    keyprefix: str
    fanout_prefix: str
    fanout_patterns: bool

    @classmethod
    def of(cls, celery: Celery, db: int) -> Route:
        options = celery.conf.broker_transport_options or {}
        fanout = options.get("fanout_prefix", True)
        prefix = Channel.keyprefix_fanout if fanout is True else (fanout or "")
        return cls(options.get("global_keyprefix", ""), prefix.format(db=db),
                   bool(options.get("fanout_patterns", True)))

    def queue(self, name: str) -> str:
        return self.keyprefix + name  # priority 0: the queue's own list

    def bindings(self, queue: str) -> tuple[list[str], str]:
        """kombu's binding tables for `queue` (declared on its own direct exchange)."""
        member = Channel.sep.join([queue, "", queue])
        return ([self.keyprefix + Channel.keyprefix_queue % queue,
                 self.keyprefix + Channel.keyprefix_binding_permanent % queue], member)

    def event_topic(self) -> str:
        tail = f"/{SENT_ROUTING_KEY}" if self.fanout_patterns else ""
        return f"{self.keyprefix}{self.fanout_prefix}{EVENT_EXCHANGE}{tail}"


# One call writes a chunk, atomically (a script runs whole or not at all) and with one reply
# to read: KEYS[1] the set of pending ids, then the queues' lists and binding tables named by
# index. ARGV: the score of the pending ids, the events' topic ('' when events are off), the
# number of binding entries and that many (table, member) pairs, then per message its id,
# its list, its text and its event.
_SEND = """
local now, topic = ARGV[1], ARGV[2]
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('sadd', KEYS[tonumber(ARGV[i])], ARGV[i + 1])
  i = i + 2
end
local ids = {}
for j = i, #ARGV, 4 do
  ids[#ids + 1] = now
  ids[#ids + 1] = ARGV[j]
end
if #ids > 0 then
  redis.call('zadd', KEYS[1], unpack(ids))
end
for j = i, #ARGV, 4 do
  redis.call('lpush', KEYS[tonumber(ARGV[j + 1])], ARGV[j + 2])
  if topic ~= '' then
    redis.call('publish', topic, ARGV[j + 3])
  end
end
return #ids / 2
"""


class DirectPublisher:
    """One event loop's writer of task messages."""

    def __init__(self, celery: Celery, client: aioredis.Redis, route: Route,
                 pending_key: str) -> None:
        self._celery = celery
        self.client = client
        self._route = route
        self._pending_key = pending_key
        self._declared: set[str] = set()
        self._origin = anon_nodename()
        self._script = client.register_script(_SEND)

    async def send(self, messages: Sequence[Message]) -> None:
        for start in range(0, len(messages), CHUNK):
            await self._send(messages[start:start + CHUNK])

    async def _send(self, messages: Sequence[Message]) -> None:
        celery = self._celery
        events = bool(celery.conf.task_send_sent_event)
        writer = Writer(reply_to=celery.thread_oid, origin=self._origin)
        route = self._route
        keys = [self._pending_key]
        index: dict[str, int] = {}

        def key(name: str) -> int:
            if name not in index:
                keys.append(name)
                index[name] = len(keys)
            return index[name]

        new_queues = sorted({m.queue for m in messages} - self._declared)
        args: list[Any] = [time.time(), route.event_topic() if events else ""]
        bindings: list[Any] = []
        for queue in new_queues:
            tables, member = route.bindings(queue)
            for table in tables:
                bindings += [key(table), member]
        args += [len(bindings) // 2, *bindings]
        clock = celery.clock
        for m in messages:
            text, fields = writer.message(m.actor, m.message_id, m.task_id, m.queue, eta=m.eta,
                                          headers=m.headers())
            event = writer.sent_event(fields, clock=clock.forward()) if events else ""
            args += [str(m.message_id), key(route.queue(m.queue)), text, event]
        await self._script(keys=keys, args=args)
        self._declared.update(new_queues)


# -- one publisher per event loop, kept on the app -------------------------------------------

_lock = threading.Lock()


def direct_capable(celery: Celery) -> bool:
    """Apps made by shared.broker.make_celery with PUBLISH_MODE=direct and a Redis URL this
    path can write to; anything else (a stand-in app in tests, say) is sent through kombu."""
    capable = celery.__dict__.get("taskreaper_direct")
    if capable is None:
        capable = (getattr(celery, "taskreaper_publish_mode", None) == "direct"
                   and getattr(celery, "taskreaper_pending_key", None) is not None
                   and urlsplit(str(celery.conf.broker_url)).scheme in DIRECT_SCHEMES)
        celery.__dict__["taskreaper_direct"] = capable
    return bool(capable)


def publisher_for(celery: Celery) -> DirectPublisher:
    """This event loop's publisher for `celery` (made on first use)."""
    loop = asyncio.get_running_loop()
    key = (os.getpid(), id(loop))
    with _lock:
        table: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, DirectPublisher]] = \
            celery.__dict__.setdefault("taskreaper_publishers", {})
        for stale in [k for k, (lp, _) in table.items() if lp.is_closed() or k[0] != key[0]]:
            del table[stale]  # a closed loop took its connections along; a fork's are the parent's
        found = table.get(key)
        if found is None:
            client = connect(str(celery.conf.broker_url))
            db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
            found = (loop, DirectPublisher(celery, client, Route.of(celery, db),
                                           celery.taskreaper_pending_key))
            table[key] = found
        return found[1]


def close_publishers(celery: Celery) -> None:
    """Lets go of every loop's connections, from wherever the app is closed: on the loop
    itself (closed in the background), another thread's running loop, or a stopped one."""
    with _lock:
        table = celery.__dict__.pop("taskreaper_publishers", {})
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for (pid, _), (loop, publisher) in table.items():
        if pid != os.getpid() or loop.is_closed():
            continue
        closing = publisher.client.aclose()
        if running is not None and loop is running:
            task = loop.create_task(closing)
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(closing, loop)
        else:
            loop.run_until_complete(closing)


_closing: set[asyncio.Task[Any]] = set()
