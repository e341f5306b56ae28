"""One Redis subscription per API process, fanned out to every open event stream.

A thousand streams cost one Redis connection, and the API's pool stays free for the calls
that need it. Streams are capped in total and per token. The hub also keeps them alive:
one ticker sends every stream its keep-alive comment and ends those whose client left, so a
stream's own task wakes only to write, and an event costs each stream one wake-up.
A stream whose client cannot keep up (its queue is full) is ended rather than buffered
without bound; the client reconnects and reloads what it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.client import PubSub

from shared.tokens import REVOKED_EVENT, Principal

log = structlog.get_logger("api.events")

# Frames a stream may have waiting before it counts as stuck and is ended.
QUEUE_SIZE = 512
END = b""
KEEPALIVE = b": keepalive\n\n"
# How long the reader waits on Redis before it looks up (a stop, a health check).
_READ_WAIT = 1.0


def frame(payload: Any) -> bytes:
    """One event in SSE wire format."""
    lines = []
    kind = payload.get("type") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind.isprintable():
        lines.append(f"event: {kind}")
    # Compact JSON never contains a newline, so one data line carries the whole payload.
    lines.append("data: " + json.dumps(payload, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


class TooManyStreams(Exception):
    pass


@dataclass(eq=False)
class Stream:
    owner: Principal
    transport: asyncio.BaseTransport | None
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    ending: bool = False

    def offer(self, data: bytes) -> None:
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.end()

    def end(self) -> None:
        self.ending = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(END)

    @property
    def gone(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def drop_if_stuck(self) -> bool:
        """A stream told to end that is still open a tick later is stuck in a write to a
        client that reads nothing (its buffers are full): dropping the connection ends the
        write, and the stream gives its place back."""
        if not self.ending:
            return False
        if isinstance(self.transport, asyncio.WriteTransport) and not self.gone:
            log.warning("api.events_client_stuck", by=self.owner.name)
            self.transport.abort()
        return True


class EventHub:
    def __init__(self, redis: aioredis.Redis, channel: str, *, max_streams: int,
                 per_token: int, keepalive: float) -> None:
        self.redis = redis
        self.channel = channel
        self.max_streams = max_streams
        self.per_token = per_token
        self.keepalive = keepalive
        self.streams: set[Stream] = set()
        self._per_token: Counter[str] = Counter()
        self._reader: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def subscribed(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def open(self, owner: Principal, transport: asyncio.BaseTransport | None) -> Stream:
        """A new stream for `owner`, once the subscription stands. Raises TooManyStreams
        past a cap, and Redis' errors when it cannot subscribe."""
        if len(self.streams) >= self.max_streams:
            raise TooManyStreams(f"{self.max_streams} event streams are open on this server")
        if self._per_token[owner.secret_hash] >= self.per_token:
            raise TooManyStreams(f"token {owner.name!r} has {self.per_token} event streams open")
        # Counted before the first await, so streams opening at once cannot pass the caps.
        stream = Stream(owner, transport)
        self.streams.add(stream)
        self._per_token[owner.secret_hash] += 1
        try:
            await self._subscribe()
        except BaseException:
            self.close(stream)
            raise
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="api-event-keepalive")
        return stream

    def close(self, stream: Stream) -> None:
        if stream in self.streams:
            self.streams.discard(stream)
            self._per_token[stream.owner.secret_hash] -= 1
            if self._per_token[stream.owner.secret_hash] <= 0:
                del self._per_token[stream.owner.secret_hash]

    def end_all(self) -> None:
        for stream in list(self.streams):
            stream.end()

    async def stop(self) -> None:
        self.end_all()
        for task in (self._reader, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reader = self._ticker = None

    async def _subscribe(self) -> None:
        if self.subscribed:
            return
        async with self._lock:
            if self.subscribed:
                return
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
            except BaseException:
                await pubsub.aclose()
                raise
            self._reader = asyncio.create_task(self._read(pubsub), name="api-event-hub")
            log.info("api.event_hub_subscribed", channel=self.channel)

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=_READ_WAIT)
                if message is not None:
                    self.dispatch(message["data"])
        except redis.exceptions.RedisError as exc:
            # The next stream to open subscribes again; the ones open now end and reconnect.
            log.warning("api.events_redis_lost", error=str(exc), streams=len(self.streams))
        finally:
            self.end_all()
            with contextlib.suppress(Exception):
                await asyncio.shield(pubsub.aclose())

    async def _tick(self) -> None:
        while self.streams:
            await asyncio.sleep(self.keepalive)
            for stream in list(self.streams):
                if stream.drop_if_stuck():
                    continue
                if stream.gone:
                    stream.end()
                else:
                    stream.offer(KEEPALIVE)

    def dispatch(self, data: str | bytes) -> None:
        try:
            payload = json.loads(data)
        except ValueError:
            log.warning("api.event_not_json", size=len(data))
            return
        kind = payload.get("type") if isinstance(payload, dict) else None
        if kind == REVOKED_EVENT:
            for stream in [s for s in self.streams if s.owner.name == payload.get("name")]:
                stream.end()
            return
        if isinstance(kind, str) and kind.startswith("token."):
            return  # about tokens, not tasks: not for every viewer's eyes
        out = frame(payload)
        for stream in list(self.streams):
            stream.offer(out)
