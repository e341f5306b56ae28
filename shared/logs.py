"""structlog setup: JSON lines into logs/<name>.log, readable lines on the console."""

from __future__ import annotations

import logging
import logging.handlers
import sys

import structlog

from shared.settings import Settings

_LOG_FILES = {"api": "app.log", "app": "app.log", "worker": "celery_worker.log", "reaper": "reaper.log"}


def configure_logging(settings: Settings, role: str, *, console: bool = True) -> None:
    """Routes stdlib and structlog records to the role's file (JSON) and the console."""
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_taskreaper", False):
            root.removeHandler(handler)
    root.setLevel(settings.log_level.upper())

    path = settings.log_path(_LOG_FILES.get(role, f"{role}.log"))
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    file_handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.dict_tracebacks,
                    structlog.processors.JSONRenderer(ensure_ascii=False)],
        foreign_pre_chain=shared,
    ))
    file_handler._taskreaper = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    if console:
        console_handler = logging.StreamHandler(sys.stderr)
        console_handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())],
            foreign_pre_chain=shared,
        ))
        console_handler._taskreaper = True  # type: ignore[attr-defined]
        root.addHandler(console_handler)
    for noisy in ("asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
