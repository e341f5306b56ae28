"""Cancels across the fleet: who receives one, what it costs Redis, and how long until every
pool process has seen a cancel-all.

Receivers are Redis's own answer: PUBLISH returns how many subscribers it delivered the
message to. The canceller is the product's (`shared.cancellation.Canceller`) in this
process; its Redis client is wrapped only to keep those answers and the time the announce
left, which it otherwise drops.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.logtail import LogTail
from bench.stats import Dist
from shared.keys import Keys


class Published:
    """A Redis client that remembers, for each pipeline it ran, every PUBLISH with its
    channel and receiver count, and when the pipeline was sent and answered."""

    def __init__(self, inner: aioredis.Redis) -> None:
        self._inner = inner
        self.sent: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self._inner.pipeline(*args, **kwargs)
        execute = pipe.execute

        async def counted(*a: Any, **k: Any) -> Any:
            commands = [c[0] for c in pipe.command_stack]
            started = time.time()
            results = await execute(*a, **k)
            entry = {"sent_at": started, "answered_at": time.time(), "publishes": []}
            for args, result in zip(commands, results, strict=False):
                if str(args[0]).upper() == "PUBLISH":
                    channel = args[1].decode() if isinstance(args[1], bytes) else str(args[1])
                    entry["publishes"].append({"channel": channel, "receivers": int(result),
                                               "bytes": len(args[2])})
            if entry["publishes"]:
                self.sent.append(entry)
            return results

        pipe.execute = counted
        return pipe


def channel_kind(keys: Keys, channel: str) -> str:
    if channel == keys.cancel_channel:
        return "fleet"
    if channel.startswith(keys.task_cancel_channel("")):
        return "task"
    if channel.startswith(keys.node_cancel_channel("")):
        return "node"
    return "other"


class Observed:
    """`task.cancel_observed` lines from every host's worker log."""

    def __init__(self, paths: list[Path]) -> None:
        self.tails = [LogTail(p) for p in paths]

    def find(self, task_id: str) -> dict[str, Any] | None:
        for tail in self.tails:
            if (record := tail.find("task.cancel_observed", task_id)) is not None:
                return record
        return None

    async def wait(self, task_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        seen: dict[str, dict[str, Any]] = {}
        while True:
            for tid in task_ids:
                if tid not in seen and (record := self.find(tid)) is not None:
                    seen[tid] = record
            if len(seen) == len(task_ids) or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.02)


async def numsub(redis: aioredis.Redis, keys: Keys, task_id: str, node: str) -> dict[str, int]:
    """Subscribers of the channels a single cancel uses, and of the fleet-wide one."""
    channels = {"task": keys.task_cancel_channel(task_id), "node": keys.node_cancel_channel(node),
                "fleet": keys.cancel_channel}
    found = dict(await redis.pubsub_numsub(*channels.values()))
    return {kind: int(found.get(ch.encode(), found.get(ch, 0))) for kind, ch in channels.items()}


def _noop_event() -> str:
    """Shaped as a single cancel's event, for a task no process runs: every receiver parses
    and matches it, none acts on it (a guardian only looks at the DB once more)."""
    return json.dumps({"ids": [str(uuid.uuid4())], "force": False, "reason": "bench-noop"})


async def burst(redis: aioredis.Redis, targets: list[tuple[str, ...]], baseline_out_per_s: float
                ) -> dict[str, Any]:
    """PUBLISHes one no-op event to each tuple of channels (one pipeline), and returns what
    Redis delivered: receivers summed from its replies, bytes it sent to clients meanwhile
    (less the steady state's rate over the same time)."""
    stats = await redis.info("stats")
    before, started = int(stats["total_net_output_bytes"]), time.perf_counter()
    async with redis.pipeline(transaction=False) as pipe:
        for channels in targets:
            payload = _noop_event()
            for channel in channels:
                pipe.publish(channel, payload)
        replies = await pipe.execute()
    await asyncio.sleep(0.5)  # the sockets drain
    stats = await redis.info("stats")
    took = time.perf_counter() - started
    sent = int(stats["total_net_output_bytes"]) - before - baseline_out_per_s * took
    receivers = sum(int(r) for r in replies)
    return {"events": len(targets), "publishes": len(replies), "deliveries": receivers,
            "per_event": round(receivers / max(len(targets), 1), 2),
            "net_output_bytes": round(sent), "window_s": round(took, 3),
            "bytes_per_event": round(sent / max(len(targets), 1))}


def latencies(t0: float, published_at: float | None, records: dict[str, dict[str, Any]]
              ) -> dict[str, Any]:
    """Call -> observed and event sent -> observed, per task, as distributions (ms)."""
    from_call, from_event = Dist(), Dist()
    via: dict[str, int] = {}
    for record in records.values():
        from_call.add((record["epoch"] - t0) * 1000)
        if published_at is not None:
            from_event.add((record["epoch"] - published_at) * 1000)
        key = str(record.get("via"))
        via[key] = via.get(key, 0) + 1
    return {"from_call_ms": from_call.to_json(), "from_event_ms": from_event.to_json(),
            "via": via}
