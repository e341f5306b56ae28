"""Many event streams at once: they share one Redis subscription, they are capped, and they
never starve the rest of the API of Redis connections; tickets and revocation."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from services.api.app import create_app
from services.api.events import HUB
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from tests.fixtures_api import make_token

pytestmark = pytest.mark.usefixtures("actors")

ECHO = {"actor": "echo", "kwargs": {"text": "x"}}


async def serve(settings: Settings) -> TestServer:
    srv = TestServer(create_app(settings.with_(public_reads=False), sse_keepalive=5.0))
    await srv.start_server()
    return srv


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[TestServer]:
    srv = await serve(settings.with_(event_streams_max=1000, event_streams_per_token=1000))
    yield srv
    await srv.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # One session, no connection limit: every stream holds its own socket.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


async def open_stream(session: aiohttp.ClientSession, url: str,
                      headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    resp = await session.get(url, headers=headers)
    if resp.status == 200:
        # The first comment proves the stream is live, not just accepted.
        async with asyncio.timeout(20):
            while b": connected" not in await resp.content.readline():
                pass
    return resp


async def next_event(resp: aiohttp.ClientResponse, kind: str, task_id: str,
                     timeout: float = 20.0) -> float:
    """Reads the stream up to the `kind` event of `task_id`; returns when it came."""
    async with asyncio.timeout(timeout):
        while True:
            line = (await resp.content.readline()).decode()
            if not line:
                raise AssertionError(f"stream ended before {kind}")
            if line.startswith("data: "):
                data = json.loads(line[6:])
                if data.get("type") == kind and data.get("task_id") == task_id:
                    return time.monotonic()


async def subscriptions(redis: aioredis.Redis, keys: Keys) -> int:
    return int((await redis.pubsub_numsub(keys.events_channel))[0][1])


async def test_open_streams_leave_submissions_working(
        server: TestServer, session: aiohttp.ClientSession, auth: dict[str, str],
        redis: aioredis.Redis, keys: Keys) -> None:
    # given: more streams than the API's Redis pool has connections (100)
    url = str(server.make_url("/api/v1/events"))
    streams = await asyncio.gather(*(open_stream(session, url, auth) for _ in range(110)))
    try:
        assert [s.status for s in streams].count(200) == 110

        # when
        resp = await session.post(server.make_url("/api/v1/tasks"), headers=auth, json=ECHO)

        # then the submission works, and its event reaches every stream
        body: Any = await resp.json()
        assert resp.status == 202, body
        await asyncio.gather(*(next_event(s, "task.submitted", body["id"]) for s in streams))
        assert await subscriptions(redis, keys) == 1
    finally:
        for s in streams:
            s.close()


async def test_a_thousand_streams_one_subscription_and_the_cap(
        server: TestServer, session: aiohttp.ClientSession, auth: dict[str, str],
        redis: aioredis.Redis, keys: Keys) -> None:
    # given a thousand streams open from one client, the cap of this server
    url = str(server.make_url("/api/v1/events"))
    streams = await asyncio.gather(*(open_stream(session, url, auth) for _ in range(1000)))
    try:
        assert [s.status for s in streams].count(200) == 1000
        assert await subscriptions(redis, keys) == 1

        # when a task is submitted and cancelled
        submitted = await session.post(server.make_url("/api/v1/tasks"), headers=auth,
                                       json=ECHO)
        task = await submitted.json()
        assert submitted.status == 202, task
        await asyncio.gather(*(next_event(s, "task.submitted", task["id"]) for s in streams))
        asked = time.monotonic()
        cancelled = await session.post(server.make_url(f"/api/v1/tasks/{task['id']}/cancel"),
                                       headers=auth)

        # then the cancel's event reaches every stream, pushed, not polled
        assert cancelled.status == 202, await cancelled.text()
        seen = await asyncio.gather(
            *(next_event(s, "task.cancel_requested", task["id"]) for s in streams))
        delays = sorted(at - asked for at in seen)
        p99 = delays[int(0.99 * len(delays)) - 1]
        print(f"cancel event on 1000 streams: p50 {delays[500] * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms")
        assert p99 < 10.0

        # and the 1,001st stream is refused, told when to come back
        extra = await session.get(url, headers=auth)
        assert extra.status == 429
        assert (await extra.json())["error"]["code"] == "too_many_streams"
        assert int(extra.headers["Retry-After"]) >= 1
    finally:
        for s in streams:
            s.close()


async def test_streams_are_capped_per_token_and_in_total(
        settings: Settings, session: aiohttp.ClientSession, db: Db) -> None:
    srv = await serve(settings.with_(event_streams_max=3, event_streams_per_token=2))
    ann = await make_token(db, "ann", "viewer")
    ben = await make_token(db, "ben", "viewer")
    url = str(srv.make_url("/api/v1/events"))
    try:
        a1, a2 = await open_stream(session, url, ann), await open_stream(session, url, ann)
        a3 = await session.get(url, headers=ann)
        b1 = await open_stream(session, url, ben)
        b2 = await session.get(url, headers=ben)
        assert [r.status for r in (a1, a2, a3, b1, b2)] == [200, 200, 429, 200, 429]
        # a closed stream gives its place back
        a1.close()
        hub = srv.app[HUB]
        async with asyncio.timeout(5):
            while len(hub.streams) > 2:
                await asyncio.sleep(0.05)
        b3 = await open_stream(session, url, ben)
        assert b3.status == 200
        for r in (a2, b1, b3):
            r.close()
    finally:
        await srv.close()


async def test_a_stream_ticket_opens_one_stream_for_a_live_token(
        server: TestServer, session: aiohttp.ClientSession, db: Db) -> None:
    # given a viewer, as a browser's EventSource would be: no Authorization on the stream
    cleo = await make_token(db, "cleo", "viewer")
    ticket_url = server.make_url("/api/v1/events/ticket")
    got = await session.post(ticket_url, headers=cleo)
    assert got.status == 201
    ticket = (await got.json())["ticket"]
    url = str(server.make_url(f"/api/v1/events?ticket={ticket}"))

    # when the ticket opens a stream, and is used again
    first = await open_stream(session, url)
    again = await session.get(url)

    # then once only
    assert first.status == 200 and again.status == 403
    first.close()
    # and a ticket is no token elsewhere, nor a stream without any
    assert (await session.get(server.make_url(f"/api/v1/tasks?ticket={ticket}"))).status == 401
    assert (await session.get(server.make_url("/api/v1/events"))).status == 401

    # when the token is revoked between a ticket and its stream
    other = (await (await session.post(ticket_url, headers=cleo)).json())["ticket"]
    await db.revoke_api_token("cleo", "test")

    # then the ticket is refused as well
    late = await session.get(server.make_url(f"/api/v1/events?ticket={other}"))
    assert late.status == 403


async def test_revoking_a_token_ends_its_open_streams(
        server: TestServer, session: aiohttp.ClientSession, db: Db,
        auth: dict[str, str]) -> None:
    # given a stream of dora's and one of the admin's
    dora = await make_token(db, "dora", "viewer")
    url = str(server.make_url("/api/v1/events"))
    hers = await open_stream(session, url, dora)
    admins = await open_stream(session, url, auth)

    # when the admin revokes dora's token
    resp = await session.delete(server.make_url("/api/v1/tokens/dora"), headers=auth)
    assert resp.status == 200

    # then her stream ends at once, the admin's goes on
    async with asyncio.timeout(5):
        while await hers.content.readline():
            pass
    assert len(server.app[HUB].streams) == 1
    hers.close()
    admins.close()


async def test_a_client_that_reads_nothing_loses_its_stream(
        settings: Settings, auth: dict[str, str], redis: aioredis.Redis, keys: Keys) -> None:
    # given a stream whose client stops reading once it is open
    srv = TestServer(create_app(settings, sse_keepalive=0.3))
    await srv.start_server()
    try:
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: {auth['Authorization']}\r\n\r\n".encode())
        await writer.drain()
        assert b" 200 " in await reader.readline()
        hub = srv.app[HUB]
        async with asyncio.timeout(5):
            while not hub.streams:
                await asyncio.sleep(0.05)

        # when far more events come than its buffers hold
        big = "x" * 8000
        for i in range(0, 3000, 100):
            async with redis.pipeline(transaction=False) as pipe:
                for n in range(i, i + 100):
                    pipe.publish(keys.events_channel, json.dumps({"type": "t", "n": n, "p": big}))
                await pipe.execute()

        # then the server drops it, instead of holding its place and its frames
        async with asyncio.timeout(10):
            while hub.streams:
                await asyncio.sleep(0.05)
        writer.close()
    finally:
        await srv.close()
