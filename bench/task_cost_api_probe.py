"""`python -m bench.task_cost_api_probe`: our API, with each step of `POST /api/v1/tasks`
timed (nothing in services/ changes).

Milliseconds per call, kept in memory and written to `$TASK_COST_PROBE_DIR/api.json` every
half second as one list per step, oldest first (a reader slices them by length before and
after a load):

- `request`: the whole request inside the server, from the outermost middleware in;
- `handler`: `submit_task`, the endpoint itself (what the middlewares leave: metrics, the
  error mapping, the method check, the token check and the rate limiter);
- `get_actor` and `insert_task`: the two statements of `shared.submit.submit`;
- `publish`: the Celery message (PUBLISH_MODE);
- `event`: the `task.submitted` event.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

samples: dict[str, list[float]] = defaultdict(list)
_lock = threading.Lock()


def _add(step: str, started: float) -> None:
    with _lock:
        samples[step].append(round((time.perf_counter() - started) * 1000, 4))


def _timed(step: str, fn: Any) -> Any:
    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            _add(step, started)
    return timed


def _dump(path: Path) -> None:
    while True:
        time.sleep(0.5)
        with _lock:
            text = json.dumps(samples)
        path.with_suffix(".tmp").write_text(text)
        path.with_suffix(".tmp").replace(path)


def install(out_dir: Path) -> None:
    from aiohttp import web

    import services.api.app as app_module
    import services.api.tasks as tasks
    import shared.submit as submit
    from shared.db import Db

    Db.get_actor = _timed("get_actor", Db.get_actor)
    Db.insert_task = _timed("insert_task", Db.insert_task)
    submit.publish = _timed("publish", submit.publish)
    tasks.publish_event = _timed("event", tasks.publish_event)
    tasks.submit_task = _timed("handler", tasks.submit_task)
    outermost = app_module.metrics_middleware

    def timed_outermost(metrics: Any) -> Any:
        inner = outermost(metrics)

        @web.middleware
        async def whole(request: web.Request, handler: Any) -> Any:
            started = time.perf_counter()
            try:
                return await inner(request, handler)
            finally:
                if request.method == "POST" and request.path == "/api/v1/tasks":
                    _add("request", started)
        return whole

    app_module.metrics_middleware = timed_outermost
    threading.Thread(target=_dump, args=(out_dir / "api.json",), daemon=True).start()


def main() -> None:
    out_dir = Path(os.environ["TASK_COST_PROBE_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)
    install(out_dir)
    from services.api.__main__ import main as api_main

    api_main()


if __name__ == "__main__":
    main()
