"""Follows a service's JSON log file and finds the time an event was logged for a task."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any


class LogTail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._seen: dict[tuple[str, str], dict[str, Any]] = {}

    def skip_existing(self) -> None:
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
                key = (record["event"], record["task_id"])
                record["epoch"] = datetime.fromisoformat(record["timestamp"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue  # not one of ours (Celery's own lines), or no task id
            self._seen.setdefault(key, record)

    def find(self, event: str, task_id: str) -> dict[str, Any] | None:
        """The first `event` line for `task_id` written so far, if any."""
        self._read()
        return self._seen.get((event, task_id))

    async def when(self, event: str, task_id: str, timeout: float) -> float:
        """Epoch seconds of the first `event` line for `task_id`."""
        return float((await self.record(event, task_id, timeout))["epoch"])

    async def record(self, event: str, task_id: str, timeout: float) -> dict[str, Any]:
        """The first `event` line for `task_id`, with its time as `epoch`."""
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            if (event, task_id) in self._seen:
                return self._seen[(event, task_id)]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} for {task_id} in {self.path} after {timeout}s")
            await asyncio.sleep(0.005)


def count(path: Path, event: str) -> int:
    """How many lines of a JSON log are `event`."""
    needle = f'"event": "{event}"'
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return sum(needle in line for line in fh)
    except FileNotFoundError:
        return 0
