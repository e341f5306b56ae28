"""Task change events: published on Redis, relayed to HTTP clients as server-sent events.

One Redis subscription per API process feeds every open stream (EventHub): a thousand
streams cost one Redis connection, and the API's pool stays free for the calls that need
it. Streams are capped in total and per token (429 past either). A stream whose client
cannot keep up is ended rather than buffered without bound; the client reconnects and
reloads what it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from aiohttp import web
from redis.asyncio.client import PubSub

from services.api import tickets
from services.api.auth import caller
from services.api.errors import ApiError
from services.api.state import KEYS, REDIS, SETTINGS, SSE_KEEPALIVE, STOPPING
from shared.events import encode
from shared.tokens import REVOKED_EVENT, Principal

log = structlog.get_logger("api.events")

# How often a stream looks up from waiting to notice a gone client.
_POLL = 1.0
# Frames a stream may have waiting before it counts as stuck and is ended.
QUEUE_SIZE = 512
_END = b""
STREAM_RETRY_AFTER = 5


async def publish_event(app: web.Application, kind: str, **fields: Any) -> None:
    """Best effort: the DB row is the record, the event only makes the news travel."""
    payload = encode(kind, **fields)
    try:
        await app[REDIS].publish(app[KEYS].events_channel, payload)
    except redis.exceptions.RedisError as exc:
        # `event` is structlog's name for the log line itself; the change's name goes as `kind`.
        log.warning("api.event_publish_failed", kind=kind, error=str(exc))


def _frame(payload: Any) -> bytes:
    lines = []
    kind = payload.get("type") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind.isprintable():
        lines.append(f"event: {kind}")
    # Compact JSON never contains a newline, so one data line carries the whole payload.
    lines.append("data: " + json.dumps(payload, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def sse_frame(data: str | bytes) -> bytes | None:
    """One event in SSE wire format, or None when the payload is not JSON."""
    try:
        payload = json.loads(data)
    except ValueError:
        log.warning("api.event_not_json", size=len(data))
        return None
    return _frame(payload)


class TooManyStreams(Exception):
    pass


@dataclass(eq=False)
class Stream:
    owner: Principal
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, frame: bytes) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.end()

    def end(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_END)


class EventHub:
    """The process's one subscription to the events channel, fanned out to its streams."""

    def __init__(self, redis: aioredis.Redis, channel: str, *, max_streams: int,
                 per_token: int) -> None:
        self.redis = redis
        self.channel = channel
        self.max_streams = max_streams
        self.per_token = per_token
        self.streams: set[Stream] = set()
        self._per_token: Counter[str] = Counter()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def subscribed(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def open(self, owner: Principal) -> Stream:
        """A new stream for `owner`, once the subscription stands. Raises TooManyStreams
        past a cap, and Redis' errors when it cannot subscribe."""
        if len(self.streams) >= self.max_streams:
            raise TooManyStreams(f"{self.max_streams} event streams are open on this server")
        if self._per_token[owner.secret_hash] >= self.per_token:
            raise TooManyStreams(f"token {owner.name!r} has {self.per_token} event streams open")
        # Counted before the first await, so streams opening at once cannot pass the caps.
        stream = Stream(owner)
        self.streams.add(stream)
        self._per_token[owner.secret_hash] += 1
        try:
            await self._subscribe()
        except BaseException:
            self.close(stream)
            raise
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
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

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
                message = await pubsub.get_message(timeout=_POLL)
                if message is not None:
                    self.dispatch(message["data"])
        except redis.exceptions.RedisError as exc:
            # The next stream to open subscribes again; the ones open now end and reconnect.
            log.warning("api.events_redis_lost", error=str(exc), streams=len(self.streams))
        finally:
            self.end_all()
            with contextlib.suppress(Exception):
                await asyncio.shield(pubsub.aclose())

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
        frame = _frame(payload)
        for stream in list(self.streams):
            stream.offer(frame)


HUB = web.AppKey("event_hub", EventHub)


async def hub_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[HUB] = EventHub(app[REDIS], app[KEYS].events_channel,
                        max_streams=settings.event_streams_max,
                        per_token=settings.event_streams_per_token)
    yield
    await app[HUB].stop()


async def end_streams(app: web.Application) -> None:
    """On shutdown: open streams end now instead of holding the server up."""
    app[STOPPING].set()
    app[HUB].end_all()


async def issue_ticket(request: web.Request) -> web.Response:
    owner = caller(request)
    assert owner is not None  # the route needs a token (auth.ROUTE_ACCESS)
    ticket = await tickets.issue(request.app[REDIS], request.app[SETTINGS].key_prefix,
                                 owner.secret_hash)
    return web.json_response({"ticket": ticket, "expires_in": tickets.TICKET_TTL}, status=201)


async def stream_events(request: web.Request) -> web.StreamResponse:
    owner = caller(request)
    assert owner is not None  # the route needs a token or a ticket (auth.ROUTE_ACCESS)
    hub = request.app[HUB]
    try:
        # Subscribing before the response starts lets a Redis outage still answer 503.
        stream = await hub.open(owner)
    except TooManyStreams as exc:
        raise ApiError(429, "too_many_streams", str(exc),
                       headers={"Retry-After": str(STREAM_RETRY_AFTER)}) from None
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n: connected\n\n")
        await _relay(request, response, stream)
        return response
    finally:
        hub.close(stream)


async def _relay(request: web.Request, response: web.StreamResponse, stream: Stream) -> None:
    keepalive = request.app[SSE_KEEPALIVE]
    stopping = request.app[STOPPING]
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    log.info("api.events_opened", peer=request.remote, by=stream.owner.name)
    try:
        while not stopping.is_set():
            try:
                async with asyncio.timeout(min(_POLL, keepalive)):
                    frame: bytes | None = await stream.queue.get()
            except TimeoutError:
                frame = None
            if frame == _END:
                break
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            if frame is None and loop.time() - last_write >= keepalive:
                frame = b": keepalive\n\n"
            if frame is not None:
                await response.write(frame)
                last_write = loop.time()
    except ConnectionResetError:
        pass  # the client went away between two writes
    log.info("api.events_closed", peer=request.remote, by=stream.owner.name)
