"""`python -m services.reaper`: one reaper replica (run several; one leads)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from services.reaper.daemon import run_reaper
from shared.logs import configure_logging
from shared.settings import Settings


async def _main() -> None:
    settings = Settings.from_env()
    configure_logging(settings, "reaper")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_reaper(settings, stop)


def main() -> None:
    asyncio.run(_main())
    # A remote-control broadcast stuck on a dead broker would hold the interpreter's exit
    # (executor threads are joined); everything worth keeping was closed above.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
