"""Helpers for the taskctl tests: run the real console script, look at Redis directly.

Holds no tests itself."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pexpect
import psutil
import redis.asyncio as aioredis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from tests.support import ROOT, settings_env

TERMINAL = {"succeeded", "failed", "cancelled", "lost"}


def ctl_command() -> list[str]:
    script = Path(sys.executable).with_name("taskctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.ctl"]


def run_ctl(settings: Settings, *args: str, stdin: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ctl_command(), *args], env=env or settings_env(settings), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          input=stdin if stdin is not None else "")


async def arun_ctl(settings: Settings, *args: str, **kw: object
                   ) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_ctl, settings, *args, **kw)  # type: ignore[arg-type]


def spawn_ctl(settings: Settings, *args: str, rows: int = 60, cols: int = 240) -> pexpect.spawn:
    """taskctl on a pseudo-terminal, as an operator would run it."""
    cmd = ctl_command()
    return pexpect.spawn(cmd[0], [*cmd[1:], *args], env=settings_env(settings), cwd=str(ROOT),
                         dimensions=(rows, cols), encoding="utf-8", timeout=30)


def start_decoy(settings: Settings) -> subprocess.Popen[bytes]:
    """A process that looks like a worker to anyone who greps command lines."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "celery", "worker",
         "services.worker", "-n", f"decoy@{settings.hostname}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def deployment_workers(settings: Settings) -> set[int]:
    """Every live worker process of this deployment on the host, found the slow, thorough
    way: by its environment, whatever any record says."""
    found = set()
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if "services.worker" not in " ".join(proc.info["cmdline"] or []):
                continue
            if proc.environ().get("KEY_PREFIX") == settings.key_prefix:
                found.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


async def queue_lengths(redis: aioredis.Redis, settings: Settings, queues: list[str]
                        ) -> dict[str, int]:
    """LLEN of each queue and of its priority sub-lists, straight from Redis."""
    keys = Keys(settings.key_prefix)
    out = {}
    for q in queues:
        names = [q, *(f"{q}{Channel.sep}{s}" for s in PRIORITY_STEPS if s)]
        out[q] = sum([await redis.llen(keys.celery_key(n)) for n in names])
    return out


async def unacked(redis: aioredis.Redis, settings: Settings) -> tuple[int, int]:
    keys = Keys(settings.key_prefix)
    return (await redis.hlen(keys.celery_key("unacked")),
            await redis.zcard(keys.celery_key("unacked_index")))


async def publish_actors(db: Db) -> None:
    """The catalogue a worker would publish, for tests that submit before any worker runs."""
    from services.worker.actors import distill, stubborn

    for act in (distill, stubborn):
        await db.upsert_actor(act.name, act.queue, act.params, act.options)


async def rows_of(db: Db, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]:
    rows = await db.pool.fetch("SELECT id, status, attempt FROM tasks WHERE id = ANY($1::uuid[])",
                               ids)
    return {r["id"]: (r["status"], r["attempt"]) for r in rows}
