"""Task change events: published on Redis, relayed to HTTP clients as server-sent events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.exceptions
import structlog
from aiohttp import web
from redis.asyncio.client import PubSub

from services.api.state import KEYS, REDIS, SSE_KEEPALIVE, STOPPING
from shared.events import encode

log = structlog.get_logger("api.events")

# How often the stream looks up from waiting to notice shutdown or a gone client.
_POLL = 0.5


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
    lines = []
    kind = payload.get("type") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind.isprintable():
        lines.append(f"event: {kind}")
    # Compact JSON never contains a newline, so one data line carries the whole payload.
    lines.append("data: " + json.dumps(payload, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


async def stream_events(request: web.Request) -> web.StreamResponse:
    app = request.app
    pubsub = app[REDIS].pubsub(ignore_subscribe_messages=True)
    try:
        # Subscribing before the response starts lets a Redis outage still answer 503.
        await pubsub.subscribe(app[KEYS].events_channel)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n: connected\n\n")
        await _relay(request, response, pubsub)
        return response
    finally:
        await pubsub.aclose()


async def _relay(request: web.Request, response: web.StreamResponse, pubsub: PubSub) -> None:
    app = request.app
    keepalive = app[SSE_KEEPALIVE]
    stopping = app[STOPPING]
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    log.info("api.events_opened", peer=request.remote)
    try:
        while not stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            message = await pubsub.get_message(timeout=min(_POLL, keepalive))
            frame = sse_frame(message["data"]) if message else None
            if frame is None and loop.time() - last_write >= keepalive:
                frame = b": keepalive\n\n"
            if frame is not None:
                await response.write(frame)
                last_write = loop.time()
    except ConnectionResetError:
        pass  # the client went away between two writes
    except redis.exceptions.RedisError as exc:
        # Once streaming has begun the status is sent; ending lets the client reconnect.
        log.warning("api.events_redis_lost", error=str(exc))
    log.info("api.events_closed", peer=request.remote)
