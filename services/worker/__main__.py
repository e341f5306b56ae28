"""`python -m services.worker [celery worker options]`: one prefork worker.

SIGTERM (or Ctrl-C) drains it: its running tasks go back to the queue from their
checkpoints and it exits within DRAIN_GRACE (services/worker/shutdown.py). Send it to the
main process only: a signal to the whole process group also reaches the pool processes,
which Celery lets die at once (systemd: `KillMode=mixed`).
"""

from __future__ import annotations

import asyncio
import sys

from services.worker.app import create_worker_app, load_actors, publish_catalogue
from shared.logs import configure_logging
from shared.settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env()
    configure_logging(settings, "worker")
    actors = load_actors(settings)
    asyncio.run(publish_catalogue(settings, actors))
    app, _ = create_worker_app(settings, actors)
    extra = {q.strip() for q in settings.worker_queues.split(",") if q.strip()}
    queues = sorted({a.queue for a in actors} | {settings.default_queue} | extra)
    args = ["worker", "-P", "prefork", "-c", str(settings.worker_concurrency),
            "-Q", ",".join(queues), "--without-gossip", "--without-mingle",
            "--loglevel", settings.log_level, *(argv if argv is not None else sys.argv[1:])]
    app.worker_main(args)


if __name__ == "__main__":
    main()
