"""Writes docs/dashboard.png: the dashboard with real running, queued, finished and cancelled tasks.

    DATABASE_URL=postgresql://... REDIS_URL=redis://... python -m docs.screenshot [--dark] [out.png]

Starts its own API server, worker and reaper against a scratch database and Redis prefix,
drives the tasks through the API, photographs the page in headless Chromium, cleans up.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from devstack.databases import create_database, database_url, drop_database
from shared.settings import Settings
from tests.support import ServiceProcess, WorkerProcess
from tests.test_dashboard import eventually, http, launch_chromium, start_api

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "screenshot-" + uuid.uuid4().hex


def _submit(api: str, kwargs: dict[str, object], **extra: object) -> str:
    status, task = http("POST", f"{api}/api/v1/tasks",
                        {"actor": "distill", "kwargs": kwargs, **extra}, TOKEN)
    assert status == 202, task
    return str(task["id"])


def _task(api: str, task_id: str) -> dict[str, object]:
    return http("GET", f"{api}/api/v1/tasks/{task_id}")[1]


def stage(api: str) -> None:
    """Two finished, one cancelled part-way, one cancelled before it ran, two running, one
    scheduled."""
    done = [_submit(api, {"chunks": n, "chunk_seconds": 0.05}) for n in (6, 9)]
    eventually(lambda: all(_task(api, t)["status"] == "succeeded" for t in done), timeout=30,
               what="the short tasks to succeed")
    stopped = _submit(api, {"chunks": 40, "chunk_seconds": 0.2})
    eventually(lambda: _task(api, stopped)["progress"]["done"] >= 9, timeout=30,
               what="progress on the task to cancel")
    http("POST", f"{api}/api/v1/tasks/{stopped}/cancel", {"reason": "wrong input file"}, TOKEN)
    later = _submit(api, {"chunks": 12}, countdown=900)
    dropped = _submit(api, {"chunks": 30}, countdown=600)
    http("POST", f"{api}/api/v1/tasks/{dropped}/cancel", {"reason": "duplicate"}, TOKEN)
    eventually(lambda: _task(api, stopped)["status"] == "cancelled", timeout=15,
               what="the cancel to finish")
    running = [_submit(api, {"chunks": n, "chunk_seconds": 0.4}) for n in (120, 200)]
    eventually(lambda: all(_task(api, t)["progress"]["done"] >= 6 for t in running), timeout=60,
               what="both long tasks to make progress")
    assert _task(api, later)["status"] == "queued"


def photograph(api: str, out: Path, work: Path, theme: str = "light") -> None:
    driver = launch_chromium(work / f"profile-{theme}", width=1440, height=940)
    try:
        driver.get(api + "/")
        driver.execute_script("sessionStorage.setItem('taskreaper.token', arguments[0]);", TOKEN)
        driver.execute_script("localStorage.setItem('taskreaper.theme', arguments[0]);", theme)
        driver.refresh()
        eventually(lambda: len(driver.find_elements("css selector", "tr.task-row")) >= 7,
                   timeout=15, what="the task rows")
        eventually(lambda: "leader" in driver.find_element("id", "system").text, timeout=15,
                   what="the system panel")
        time.sleep(2.5)  # one more poll, so the bars have moved and the ages are fresh
        # The whole page in one picture, at a fixed size whatever the window decorations are.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1440, "height": int(height), "deviceScaleFactor": 1, "mobile": False})
        time.sleep(0.3)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--dark"]
    theme = "dark" if "--dark" in sys.argv[1:] else "light"
    out = Path(args[0]) if args else ROOT / "docs" / "dashboard.png"
    admin = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"tr_shot_{uuid.uuid4().hex[:10]}"
    prefix = f"trs-{uuid.uuid4().hex[:10]}"
    asyncio.run(create_database(admin, name))
    procs: list[ServiceProcess | WorkerProcess] = []
    with tempfile.TemporaryDirectory(prefix="taskreaper-shot-") as tmp:
        work = Path(tmp)
        settings = Settings.from_env(
            {}, database_url=database_url(admin, name), redis_url=redis_url, key_prefix=prefix,
            api_token=TOKEN, log_dir=str(work), heartbeat_interval=0.5,
            reaper_metrics_port=0)
        try:
            worker = WorkerProcess(settings, concurrency=2, log_path=work / "worker.log")
            procs.append(worker.start())
            worker.wait_ready()
            procs.append(ServiceProcess("services.reaper", settings,
                                        log_path=work / "reaper.log").start())
            api, url = start_api(settings, work / "api.log")
            procs.append(api)
            stage(url)
            photograph(url, out, work, theme)
            print(f"wrote {out}")
        finally:
            for proc in reversed(procs):
                proc.stop()
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
            client.close()
            asyncio.run(drop_database(admin, name))


if __name__ == "__main__":
    main()
