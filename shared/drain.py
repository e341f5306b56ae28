"""A worker's drain: the message that asks for one, and the request an operator makes.

A drain stops a worker taking messages and hands each task it runs back to the queue, to
go on from its checkpoint on another worker (services/worker/shutdown.py says how). SIGTERM
starts one inside the worker; `POST /api/v1/workers/{node}/drain` and `taskctl drain NODE`
start the same one from outside, with one message on the worker's node channel. Its main
process drains on it, and each of its pool processes sets the token of the task it runs with
reason `shutdown` (services/worker/drain.py).
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
import structlog

from shared.errors import TaskreaperError
from shared.events import encode
from shared.keys import Keys
from shared.states import CancelReason

log = structlog.get_logger("drain")

class WorkerNotFound(TaskreaperError):
    """No worker of that node name runs now."""

    def __init__(self, node: str) -> None:
        super().__init__(f"no running worker {node!r}")
        self.node = node


def drain_message(*, by: str) -> str:
    """What goes on a node channel. Cancel events there carry `ids` or `all` and never
    `drain`, so neither kind is taken for the other."""
    return json.dumps({"drain": True, "reason": CancelReason.SHUTDOWN.value, "by": by})


def parse_drain(data: Any) -> dict[str, Any] | None:
    """The drain request in a node channel message, or None for anything else."""
    try:
        event = json.loads(data)
    except (TypeError, ValueError):
        return None
    return event if isinstance(event, dict) and event.get("drain") is True else None


async def announced_workers(redis: aioredis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    """Node name -> what its main process announced about itself (host, pid, ...)."""
    out: dict[str, dict[str, Any]] = {}
    for node, raw in (await redis.hgetall(keys.workers)).items():
        name = node.decode() if isinstance(node, bytes) else str(node)
        try:
            info = json.loads(raw)
        except (TypeError, ValueError):
            info = {}
        out[name] = info if isinstance(info, dict) else {}
    return out


async def request_drain(redis: aioredis.Redis, keys: Keys, node: str, *, by: str) -> int:
    """Asks worker `node` to drain and then exit; returns how many of its processes got the
    request (its main process and each pool process). Raises WorkerNotFound for a node that
    is not announced, or whose processes are all gone (none listened)."""
    if not await redis.hexists(keys.workers, node):
        raise WorkerNotFound(node)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.publish(keys.node_drain_channel(node), drain_message(by=by))
        pipe.publish(keys.events_channel, encode("worker.drain_requested", node=node, by=by))
        receivers, _ = await pipe.execute()
    if not receivers:
        raise WorkerNotFound(node)
    log.info("worker.drain_requested", node=node, by=by, receivers=receivers)
    return int(receivers)
