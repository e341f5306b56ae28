"""A Redis pub/sub subscription kept alive for as long as the process runs.

Whatever breaks it (a Redis restart, a network cut, a malformed message) it subscribes
again, to every channel wanted by then, waiting a little longer after each failure in a
row so that an unreachable server is not hammered. Cancel events are pushed only to
those subscribed at that moment: a subscription that stayed down would leave the
fallback poll as the only way a cancel arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis

# Between the attempts after a failure: first, then doubled up to the ceiling.
FIRST_RETRY = 0.1
MAX_RETRY = 2.0


class Subscription:
    def __init__(self, client: aioredis.Redis, channels: Iterable[str],
                 on_message: Callable[[Any], None], *, log: Any, error_event: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._client = client
        # Every channel wanted now; a reconnect subscribes to exactly these.
        self.channels: set[str] = set(channels)
        self._on_message = on_message
        self._log = log
        self._error_event = error_event
        self._sleep = sleep
        self._pubsub: Any = None

    @property
    def connected(self) -> bool:
        return self._pubsub is not None

    async def run(self) -> None:
        """Receives messages forever; returns only when cancelled."""
        retry_in = FIRST_RETRY
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    asked = set(self.channels)
                    await pubsub.subscribe(*asked)
                    self._pubsub = pubsub
                    retry_in = FIRST_RETRY
                    await self._catch_up(pubsub, asked)
                    async for message in pubsub.listen():
                        if message and message.get("type") == "message":
                            self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning(self._error_event, error=str(exc), retry_in=retry_in)
                await self._sleep(retry_in)
                retry_in = min(retry_in * 2, MAX_RETRY)
            finally:
                self._pubsub = None

    async def _catch_up(self, pubsub: Any, asked: set[str]) -> None:
        """Channels added or dropped while the subscribe was under way, which add() and
        discard() could not pass on: there was no connection yet."""
        if missing := self.channels - asked:
            await pubsub.subscribe(*missing)
        if dropped := asked - self.channels:
            await pubsub.unsubscribe(*dropped)

    async def add(self, channel: str) -> None:
        """Subscribes now if connected; otherwise the next (re)connect does. Raises when
        the server could not be told (the channel stays wanted all the same)."""
        self.channels.add(channel)
        if self._pubsub is not None:
            await self._pubsub.subscribe(channel)

    async def discard(self, channel: str) -> None:
        if channel not in self.channels:
            return
        self.channels.discard(channel)
        if self._pubsub is not None:
            await self._pubsub.unsubscribe(channel)
