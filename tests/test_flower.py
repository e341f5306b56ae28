"""Flower on our broker (`python -m services.ctl.flower`) against a real worker: it lists our
tasks (queued ones too) under their actor's name with our task id, and its terminate button
is our cancel."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.cancellation import Canceller
from shared.db import Db
from shared.settings import Settings
from shared.submit import submit
from tests.support import ROOT, TERMINAL, free_port, row_where, settings_env, wait_for

# A long run of real processes: `make test-slow` (CI runs it after `make test`).
pytestmark = pytest.mark.slow


def _require_flower() -> None:
    """Flower is the optional `flower` extra: CI installs it and must run this module; on a
    developer's machine without it the module is skipped, saying how to install it."""
    if importlib.util.find_spec("flower") is not None:
        return
    message = "Flower is not installed: .venv/bin/pip install -e '.[flower]'"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A Flower process on a free port, with its HTTP API open; yields its base URL."""
    _require_flower()
    port = free_port()
    env = settings_env(settings)
    env["FLOWER_UNAUTHENTICATED_API"] = "true"
    with open(tmp_path / "flower.log", "ab") as log:
        proc = subprocess.Popen(
            # Flower would switch the workers' task events on itself (a broadcast every few
            # seconds): off here, so that what it shows is what our configuration sends.
            [sys.executable, "-m", "services.ctl.flower", f"--port={port}",
             "--address=127.0.0.1", "--enable_events=False"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    """The JSON answer, or None while Flower is not listening yet."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def test_flower_lists_our_tasks_by_actor_and_its_terminate_is_our_cancel(
        settings: Settings, db: Db, canceller: Canceller, start_worker, flower: str) -> None:
    # given a worker, and Flower on the same broker
    start_worker()
    async with aiohttp.ClientSession() as http:
        async def up() -> bool:
            return await _get(http, f"{flower}/api/tasks") is not None

        await wait_for(up, timeout=30, what="Flower up", interval=0.2)

        # when tasks are submitted (Flower sees only events sent after it subscribed, so
        # one more is sent until one shows up)
        async def listed() -> dict[str, Any] | None:
            row = await submit(db, canceller.celery, actor="distill",
                               kwargs={"chunks": 1, "chunk_seconds": 0.01})
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                tasks = await _get(http, f"{flower}/api/tasks") or {}
                seen = tasks.get(str(row["message_id"]))
                if seen and seen.get("name") and seen.get("state") == "SUCCESS":
                    return {"row": row, "seen": seen}
                await asyncio.sleep(0.2)
            return None

        found = await wait_for(listed, timeout=30, what="a task in Flower's list")
        # then Flower lists it under the actor's name, with our task id
        row, seen = found["row"], found["seen"]
        assert seen["name"] == "distill", seen
        assert str(row["id"]) in str(seen["kwargs"]), seen
        # and a task no worker has taken yet, from the event its submission sends
        parked = await submit(db, canceller.celery, actor="distill", kwargs={"chunks": 1},
                              queue="parked")

        async def parked_listed() -> Any:
            return ((await _get(http, f"{flower}/api/tasks")) or {}).get(
                str(parked["message_id"]))

        queued = await wait_for(parked_listed, timeout=10, what="a queued task in Flower")
        assert queued["name"] == "distill" and str(parked["id"]) in str(queued["kwargs"])

        # when Flower's terminate button is pressed on a running task
        long = await submit(db, canceller.celery, actor="distill",
                            kwargs={"chunks": 100, "chunk_seconds": 0.2})
        await row_where(db, long["id"], lambda r: r["status"] == "running", timeout=20,
                        what="running")
        async with http.post(f"{flower}/api/task/revoke/{long['message_id']}",
                             params={"terminate": "true", "signal": "SIGKILL"}) as resp:
            assert resp.status == 200, await resp.text()
        # then that is our cancel, audited as Celery's control
        final = await row_where(db, long["id"], lambda r: r["status"] in TERMINAL, timeout=10,
                                what="terminal")
        assert (final["status"], final["cancel_by"]) == ("cancelled", "celery-control"), \
            dict(final)
        audits = [a for a in await db.list_audit(100) if long["id"] in a["task_ids"]]
        assert [a["by"] for a in audits] == ["celery-control"]
