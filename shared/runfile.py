"""Where a running `make run` tells other local tools which servers it uses.

`make run` starts embedded servers on ports chosen at start; `taskctl` and
`make worker` read this file to reach the same ones when no URL is configured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shared.settings import Settings

_NAME = "services.json"


def write(settings: Settings) -> None:
    path = Path(settings.run_dir) / _NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"database_url": settings.database_url,
                               "redis_url": settings.redis_url}))
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def fill_in(settings: Settings) -> Settings:
    """Settings with the URLs of a local `make run` where none is configured."""
    if settings.database_url and settings.redis_url:
        return settings
    try:
        found = json.loads((Path(settings.run_dir) / _NAME).read_text())
    except (OSError, ValueError):
        return settings
    return settings.with_(database_url=settings.database_url or found.get("database_url", ""),
                          redis_url=settings.redis_url or found.get("redis_url", ""))
