"""Celery remote control for the reaper, off the event loop (kombu's client blocks)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery

from shared.broker import SETTLED_REVOKE

# Calls at once. A broadcast that waits for replies holds two broker connections (its
# publish and its reply queue), so the app's pool must hold two a call: fewer, and calls that
# each took one wait for a second forever.
THREADS = 4


class CeleryOps:
    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        celery.conf.broker_pool_limit = max(celery.conf.broker_pool_limit or 0, 2 * THREADS + 1)
        # Its own threads, so a call stuck on a dead broker never holds up shutdown.
        self._pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="celery-ops")

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.celery.close()

    async def revoke(self, message_ids: list[str]) -> None:
        """Drops reserved and scheduled copies inside every worker; kills nothing. Marked
        as ours (`SETTLED_REVOKE`): the rows are settled already, so no worker looks
        them up to cancel them again."""
        if message_ids:
            await self._run(self.celery.control.revoke, message_ids, **{SETTLED_REVOKE: True})

    async def kill(self, *, message_id: str, task_id: str | None, node: str | None,
                   pid: int | None = None, pid_started: float | None = None,
                   timeout: float = 1.0) -> list[dict[str, Any]]:
        """Asks the worker(s) to SIGKILL the verified pool process; returns their replies."""
        args: dict[str, Any] = {"message_id": message_id, "task_id": task_id}
        if pid is not None:
            args.update(pid=pid, pid_started=pid_started)
        replies = await self._run(
            self.celery.control.broadcast, "taskreaper_kill", arguments=args, reply=True,
            timeout=timeout, destination=[node] if node else None, limit=1 if node else None)
        return [body for reply in replies or [] for body in reply.values()]

    async def active(self, timeout: float = 1.0, nodes: list[str] | None = None
                     ) -> dict[str, list[dict[str, Any]]]:
        """Active requests of the given workers (all, if None): a broadcast, used sparingly.

        Naming the nodes lets the call return as soon as each has answered."""
        inspect = self.celery.control.inspect(timeout=timeout, destination=nodes,
                                              limit=len(nodes) if nodes else None)
        return await self._run(inspect.active) or {}

    async def reserved_and_scheduled(self, timeout: float = 1.0) -> dict[str, list[dict[str, Any]]]:
        inspect = self.celery.control.inspect(timeout=timeout)
        reserved, scheduled = await asyncio.gather(self._run(inspect.reserved),
                                                   self._run(inspect.scheduled))
        reserved, scheduled = reserved or {}, scheduled or {}
        out: dict[str, list[dict[str, Any]]] = {}
        for node, items in reserved.items():
            out.setdefault(node, []).extend(items)
        for node, items in scheduled.items():
            out.setdefault(node, []).extend(i.get("request", i) for i in items)
        return out
