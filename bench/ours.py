"""The handles every measurement of our own services uses: the stack, an API client, the
task rows and the worker's log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from bench.api import Api
from bench.logtail import LogTail
from bench.rows import Rows
from bench.stack import Stack


@dataclass
class Ours:
    stack: Stack
    api: Api
    http: aiohttp.ClientSession
    rows: Rows
    worker_log: LogTail
    api_log: LogTail

    @classmethod
    @asynccontextmanager
    async def open(cls, stack: Stack) -> AsyncIterator[Ours]:
        rows = await Rows.connect(stack.settings.database_url)
        # A generous pool: the load test opens many connections at once.
        connector = aiohttp.TCPConnector(limit=64)
        try:
            async with aiohttp.ClientSession(connector=connector) as http:
                yield cls(stack, Api(http, stack.base_url, stack.settings.api_token), http,
                          rows, LogTail(stack.worker_log),
                          LogTail(stack.settings.log_path("app.log")))
        finally:
            await rows.close()
