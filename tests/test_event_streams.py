"""Many event streams at once: they share one Redis subscription, they are capped, and they
never starve the rest of the API of Redis connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from services.api.app import create_app
from shared.settings import Settings

pytestmark = pytest.mark.usefixtures("actors")


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[TestServer]:
    srv = TestServer(create_app(settings, sse_keepalive=5.0))
    await srv.start_server()
    yield srv
    await srv.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # One session, no connection limit: every stream holds its own socket.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


async def open_stream(session: aiohttp.ClientSession, url: str,
                      headers: dict[str, str]) -> aiohttp.ClientResponse:
    resp = await session.get(url, headers=headers)
    if resp.status == 200:
        # The first comment proves the stream is live, not just accepted.
        async with asyncio.timeout(10):
            while b": connected" not in await resp.content.readline():
                pass
    return resp


async def test_open_streams_leave_submissions_working(
        server: TestServer, session: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    # given: more streams than the API's Redis pool has connections
    url = str(server.make_url("/api/v1/events"))
    streams = await asyncio.gather(*(open_stream(session, url, auth) for _ in range(110)))
    try:
        # when
        resp = await session.post(server.make_url("/api/v1/tasks"), headers=auth,
                                  json={"actor": "echo", "kwargs": {"text": "x"}})

        # then
        body: Any = await resp.json()
        assert resp.status == 202, body
        assert [s.status for s in streams].count(200) == 110
    finally:
        for s in streams:
            s.close()
