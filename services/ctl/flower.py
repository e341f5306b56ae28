"""`python -m services.ctl.flower [flower options]`: Flower on this deployment's broker.

Flower needs the same broker settings as the workers, including the transport
option `global_keyprefix` under which all of Celery's keys live; a plain
`celery --broker=... flower` would look at other (empty) keys. So Flower runs
inside a Celery app built from our own configuration. Flower itself is the
optional `flower` extra (`pip install '.[flower]'`).

Workers and submitters send Celery's task events unless TASK_EVENTS=false, so Flower lists
every task, queued ones included, under its actor's name with our task id in its kwargs.
Its revoke and terminate buttons are cancels like ours, audited as `celery-control`
(services/worker/celery_control.py).
"""

from __future__ import annotations

import sys

from shared.broker import make_celery
from shared.settings import Settings

FLOWER_POOL_LIMIT = 32


def flower_argv(args: list[str]) -> list[str]:
    return ["flower", *args]


def main(argv: list[str] | None = None) -> int:
    try:
        import flower  # noqa: F401
    except ImportError:
        print("Flower is not installed: pip install '.[flower]'", file=sys.stderr)
        return 2
    app = make_celery(Settings.from_env(), "taskreaper-flower")
    # Flower sends its inspect broadcasts concurrently while its event receiver keeps a
    # connection of its own; the services' small pool would make them wait forever.
    app.conf.broker_pool_limit = FLOWER_POOL_LIMIT
    return app.start(flower_argv(sys.argv[1:] if argv is None else argv)) or 0


if __name__ == "__main__":
    sys.exit(main())
