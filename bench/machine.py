"""What the figures were measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import celery
import psutil
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


async def describe(database_url: str, redis_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        postgres = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    client = aioredis.from_url(redis_url)
    try:
        redis_version = (await client.info("server"))["redis_version"]
    finally:
        await client.aclose()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgres": str(postgres).split()[0],
        "redis": str(redis_version),
        "celery": celery.__version__,
        # redis-py parses replies in Python unless hiredis is installed.
        "redis_py_parser": "hiredis" if HIREDIS_AVAILABLE else "pure Python",
    }


def code_version(root: Path) -> str:
    """The commit measured, marked `+changes` when services/ or shared/ differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        changed = git("status", "--porcelain", "--", "services", "shared")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


def one_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}; "
            f"Python {m['python']}, PostgreSQL {m['postgres']}, Redis {m['redis']}, "
            f"Celery {m['celery']} (redis-py parser: {m.get('redis_py_parser', '?')})")
