"""A cooperative cancel with 1,000 event streams open on the API: token observed (the
worker's `task.cancel_observed` line, as in 1a) with no stream open, then with STREAMS
streams open and read by one client process (a child of the bench, so the reading does not
delay the bench's own clock and calls), and how each cancel reached the task (the Redis
event, or the fallback DB poll). Also: the Redis subscriptions the streams cost, and how
many streams saw every cancel.

`python -m bench.streams [--rounds N] [--streams N]` runs it alone and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench import cancel_cooperative
from bench.ours import Ours
from bench.procs import ROOT
from bench.stack import Servers, Stack

STREAMS = 1000
ROUNDS = 20


class Streams:
    """`n` event streams from one session, each read to the end in the background."""

    def __init__(self, url: str, token: str, n: int) -> None:
        self.url = f"{url}/api/v1/events"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.n = n
        self.cancels = [0] * n
        self.statuses: list[int] = []
        self._readers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        opened = await asyncio.gather(*(self._open(i) for i in range(self.n)))
        self.statuses = [status for status in opened]

    async def _open(self, i: int) -> int:
        assert self._session is not None
        resp = await self._session.get(self.url, headers=self.headers)
        if resp.status == 200:
            await resp.content.readline()  # the stream is live
            self._readers.append(asyncio.create_task(self._read(i, resp)))
        return resp.status

    async def _read(self, i: int, resp: aiohttp.ClientResponse) -> None:
        async for line in resp.content:
            if line.startswith(b"event: task.cancel_requested"):
                self.cancels[i] += 1

    async def close(self) -> int:
        """Closes them all; returns how many were still open."""
        still = sum(1 for r in self._readers if not r.done())
        for reader in self._readers:
            reader.cancel()
        if self._session is not None:
            await self._session.close()
        return still


async def hold(url: str, token: str, n: int) -> None:
    """The child: opens the streams, says so, reads them until its stdin closes, then prints
    what each saw."""
    streams = Streams(url, token, n)
    await streams.open()
    print(json.dumps({"opened": streams.statuses.count(200)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.sleep(0.5)  # the last cancel's frame reaches the last stream
    still = await streams.close()
    print(json.dumps({"still_open": still, "cancels": streams.cancels}), flush=True)


class Holder:
    """The child process that holds the streams."""

    def __init__(self, stack: Stack, n: int) -> None:
        self.stack = stack
        self.n = n
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> dict[str, Any]:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.streams", "--hold", self.stack.base_url,
            "--streams", str(self.n), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, cwd=str(ROOT),
            env={**_env(), "BENCH_STREAM_TOKEN": self.stack.settings.api_token})
        assert self.proc.stdout is not None
        return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 120))

    async def stop(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        done = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 60))
        await self.proc.wait()
        return done


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


async def run(servers: Servers, out_dir: Path, *, rounds: int = ROUNDS,
              streams: int = STREAMS) -> dict[str, Any]:
    stack = await Stack.create(servers, out_dir, cancel_grace=1.0, event_streams_max=streams,
                               event_streams_per_token=streams)
    rng = random.Random(20261130)
    try:
        await stack.start_worker()
        await stack.start_reaper()
        await stack.start_api()
        async with Ours.open(stack) as ours:
            quiet = await cancel_cooperative.run(ours, rounds, rng)
            holder = Holder(stack, streams)
            opened = (await holder.start())["opened"]
            client = aioredis.from_url(stack.settings.redis_url)
            try:
                subscriptions = (await client.pubsub_numsub(stack.keys.events_channel))[0][1]
            finally:
                await client.aclose()
            loaded = await cancel_cooperative.run(ours, rounds, rng)
            held = await holder.stop()
    finally:
        await stack.destroy()
    return {
        "streams": streams, "rounds": rounds, "cancel_grace": 1.0,
        "opened": opened, "still_open": held["still_open"],
        "events_channel_subscriptions": int(subscriptions),
        "streams_that_saw_every_cancel": sum(1 for c in held["cancels"] if c >= rounds),
        "no_streams": {k: quiet[k] for k in ("observed", "observed_via", "announced",
                                             "delivery", "api_call")},
        "with_streams": {k: loaded[k] for k in ("observed", "observed_via", "announced",
                                                "delivery", "api_call")},
    }


def table(data: dict[str, Any]) -> str:
    rows = ["| streams open | token observed p50 / p99 | API logged the cancel p50 / p99 | "
            "API line to token p50 / p99 | observed via |", "| --- | --- | --- | --- | --- |"]
    for label, key in (("0", "no_streams"), (str(data["streams"]), "with_streams")):
        part = data[key]
        cells = [f"{part[k]['p50']} / {part[k]['p99']} ms"
                 for k in ("observed", "announced", "delivery")]
        rows.append(f"| {label} | {' | '.join(cells)} | {part['observed_via']} |")
    rows.append("")
    rows.append(f"{data['opened']} streams opened, {data['still_open']} still open at the end, "
                f"{data['streams_that_saw_every_cancel']} saw all {data['rounds']} cancels; "
                f"Redis subscriptions to the events channel: "
                f"{data['events_channel_subscriptions']}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--streams", type=int, default=STREAMS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "streams")
    parser.add_argument("--hold", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        import os

        asyncio.run(hold(args.hold, os.environ["BENCH_STREAM_TOKEN"], args.streams))
        return
    servers = Servers.open()
    try:
        data = asyncio.run(run(servers, args.out, rounds=args.rounds, streams=args.streams))
    finally:
        servers.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streams.json").write_text(json.dumps(data, indent=2))
    print(table(data))


if __name__ == "__main__":
    main()
