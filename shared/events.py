"""Task change events on Redis pub/sub: one JSON shape for every publisher.

`{"type": "task.changed", "at": <epoch>, "task_id": "...", "status": "...", ...}`.
The DB row stays the record; events only make the news travel (the dashboard, SSE).
"""

from __future__ import annotations

import json
import time
from typing import Any


def encode(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "at": time.time(), **fields}, default=str)
