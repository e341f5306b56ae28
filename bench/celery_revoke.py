"""Celery's own revoke of one of our running tasks → our row `cancelled`.

What Flower's terminate button and `celery control revoke --terminate` send:
`app.control.revoke(message_id, terminate=True, signal="SIGKILL")`, on a running
`distill` (wakes at once) and on a `stubborn` holding its GIL (only a verified kill ends
it); and a plain `revoke(message_id)` on a running `distill`.

Clock: `time.time()` just before the revoke call; row terminal is the row's
`finished_at` (PostgreSQL `now()`, same host clock). Standalone:
`.venv/bin/python -m bench.celery_revoke [--rounds 20]` starts a worker, a reaper and
the API of its own and prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.ours import Ours
from bench.stack import Servers, Stack
from bench.stats import Dist
from shared.broker import make_celery

CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "terminate_distill": ("distill", {"chunks": 100_000, "chunk_seconds": 0.2},
                          {"terminate": True, "signal": "SIGKILL"}),
    "plain_distill": ("distill", {"chunks": 100_000, "chunk_seconds": 0.2}, {}),
    "terminate_gil": ("stubborn", {"seconds": 600, "mode": "gil"},
                      {"terminate": True, "signal": "SIGKILL"}),
}


async def run(ours: Ours, rounds: int, rng: random.Random) -> dict[str, Any]:
    celery = make_celery(ours.stack.settings, "bench-operator")
    out: dict[str, Any] = {}
    try:
        for case, (actor, kwargs, options) in CASES.items():
            # The GIL case costs a pool process each round: fewer of them.
            n = rounds if actor == "distill" else max(3, rounds // 4)
            out[case] = await _case(ours, celery, actor, kwargs, options, n, rng)
    finally:
        celery.close()
    return out


async def _case(ours: Ours, celery: Any, actor: str, kwargs: dict[str, Any],
                options: dict[str, Any], rounds: int, rng: random.Random) -> dict[str, Any]:
    terminal, polled = Dist(), Dist()
    outcomes: Counter[str] = Counter()
    for _ in range(rounds):
        await ours.stack.worker_pool_full()
        task = await ours.api.submit(actor, kwargs)
        tid = task["id"]
        await ours.rows.wait_running(tid)
        await asyncio.sleep(rng.uniform(0.05, 0.15))
        message_id = str(await ours.rows.scalar(
            "SELECT message_id FROM tasks WHERE id = $1", uuid.UUID(tid)))
        t0, p0 = time.time(), time.perf_counter()
        await asyncio.to_thread(celery.control.revoke, message_id, **options)
        row, seen = await ours.rows.wait_terminal(tid, timeout=15)
        terminal.add((row["finished_at"].timestamp() - t0) * 1000)
        polled.add((seen - p0) * 1000)
        outcomes[f"{row['status']}/{row['outcome']}"] += 1
    return {"actor": actor, "options": options, "terminal": terminal.to_json(),
            "terminal_polled": polled.to_json(), "outcomes": dict(outcomes)}


async def _main(rounds: int, out_dir: Path) -> dict[str, Any]:
    servers = Servers.open()
    stack = await Stack.create(servers, out_dir)
    try:
        await stack.start_worker()
        await stack.start_reaper()
        await stack.start_api()
        async with Ours.open(stack) as ours:
            return await run(ours, rounds, random.Random(12))
    finally:
        await stack.destroy()
        servers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/out/celery_revoke"))
    args = parser.parse_args()
    data = asyncio.run(_main(args.rounds, args.out))
    for case, found in data.items():
        t = found["terminal"]
        print(f"{case}: row terminal p50 {t['p50']:.1f} ms, p99 {t['p99']:.1f} ms "
              f"(n={t['n']}), {found['outcomes']}")
    print(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
