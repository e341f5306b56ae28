"""`python -m services.api`: serve the API on HOST:PORT."""

from __future__ import annotations

import sys

import structlog
from aiohttp import web

from services.api.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings, SettingsError


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"taskreaper api: {exc}")
    configure_logging(settings, "api")
    structlog.get_logger("api").info("api.listening", host=settings.host, port=settings.port)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)


if __name__ == "__main__":
    main()
