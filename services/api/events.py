"""Task change events: published on Redis, relayed to HTTP clients as server-sent events.

The streams are fed by the process's one subscription (services/api/hub.py) and capped in
total and per token (429 past either). A browser's EventSource, which cannot send a header,
opens its stream with a ticket (services/api/tickets.py) bought with its token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import redis.exceptions
import structlog
from aiohttp import web

from services.api import tickets
from services.api.auth import caller
from services.api.errors import ApiError
from services.api.hub import END, EventHub, Stream, TooManyStreams, frame
from services.api.state import KEYS, REDIS, SETTINGS, SSE_KEEPALIVE, STOPPING
from shared.events import encode

log = structlog.get_logger("api.events")

STREAM_RETRY_AFTER = 5
HUB = web.AppKey("event_hub", EventHub)


async def publish_event(app: web.Application, kind: str, **fields: Any) -> None:
    """Best effort: the DB row is the record, the event only makes the news travel."""
    payload = encode(kind, **fields)
    try:
        await app[REDIS].publish(app[KEYS].events_channel, payload)
    except redis.exceptions.RedisError as exc:
        # `event` is structlog's name for the log line itself; the change's name goes as `kind`.
        log.warning("api.event_publish_failed", kind=kind, error=str(exc))


def sse_frame(data: str | bytes) -> bytes | None:
    """One event in SSE wire format, or None when the payload is not JSON."""
    try:
        payload = json.loads(data)
    except ValueError:
        log.warning("api.event_not_json", size=len(data))
        return None
    return frame(payload)


async def hub_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[HUB] = EventHub(app[REDIS], app[KEYS].events_channel,
                        max_streams=settings.event_streams_max,
                        per_token=settings.event_streams_per_token,
                        keepalive=app[SSE_KEEPALIVE])
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
        stream = await hub.open(owner, request.transport)
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
    """Writes what the hub hands the stream (events, keep-alives) until it ends it."""
    log.info("api.events_opened", peer=request.remote, by=stream.owner.name)
    try:
        while not request.app[STOPPING].is_set():
            data = await stream.queue.get()
            # Whatever else is waiting goes in the same write: a burst costs one wake-up.
            while data != END and not stream.queue.empty():
                more = stream.queue.get_nowait()
                if more == END:
                    await response.write(data)
                    data = END
                else:
                    data += more
            if data == END or stream.gone:
                break
            await response.write(data)
    except ConnectionResetError:
        pass  # the client went away between two writes
    log.info("api.events_closed", peer=request.remote, by=stream.owner.name)
