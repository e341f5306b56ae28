"""`python -m services.ctl.probe worker`: a container healthcheck for a worker.

Healthy when this host has a worker main process that announced itself in Redis
(it does so once Celery is ready to consume) and still runs with the recorded pid
and start time. One small Redis read; no broadcast to other workers.
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

from services.ctl import procs
from shared.keys import Keys
from shared.settings import Settings


async def worker_alive(settings: Settings) -> bool:
    client = aioredis.from_url(settings.redis_url, decode_responses=True,
                               socket_connect_timeout=2, socket_timeout=2)
    try:
        entries = await procs.read_workers(client, Keys(settings.key_prefix))
    finally:
        await client.aclose()
    return any(e.host == settings.hostname and procs.verified(e.pid, e.pid_started)[0]
               for e in entries)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["worker"]:
        print("usage: python -m services.ctl.probe worker", file=sys.stderr)
        return 2
    try:
        alive = asyncio.run(worker_alive(Settings.from_env()))
    except Exception as exc:  # unreachable Redis, bad settings: unhealthy, say why
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if not alive:
        print("unhealthy: no live worker recorded for this host", file=sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
