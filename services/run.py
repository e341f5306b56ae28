"""`make run`: the API, the reaper and a worker in the foreground, on one machine.

Without DATABASE_URL / REDIS_URL it starts embedded PostgreSQL and Redis under RUN_DIR.
Ctrl-C or SIGTERM stops the services, the worker by a drain (its tasks go back to the
queue, so the next run goes on with them), then the embedded servers. A worker that was
killed is started again; if the API or the reaper dies, everything stops with a non-zero
status (services/supervisor.py).

    python -m services.run                # api, reaper and worker
    python -m services.run worker         # one more worker against the same services
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import structlog
from honcho.printer import Printer

from services.supervisor import Supervisor
from shared import runfile
from shared.logs import configure_logging
from shared.migrate import migrate_url
from shared.settings import Settings, SettingsError

log = structlog.get_logger("run")

PROCESS_NAMES = ("api", "reaper", "worker")
_READY_TIMEOUT = 120.0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"taskreaper run: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings, "run")
    embedded = None
    own_urls: set[str] = set()
    with _sigterm_exits():
        try:
            if not settings.database_url or not settings.redis_url:
                # Imported here so a deployment with real servers never loads the wheels.
                from devstack.embedded import EmbeddedServices

                embedded = EmbeddedServices(Path(settings.run_dir))
                database_url, redis_url = embedded.start()
                own_urls = {database_url, redis_url}
                settings = settings.with_(database_url=settings.database_url or database_url,
                                          redis_url=settings.redis_url or redis_url)
            runfile.write(settings)
            applied = asyncio.run(migrate_url(settings.database_url))
            log.info("run.migrated", applied=applied)
            token_file = Path(settings.run_dir) / "api-token"
            if not settings.api_token:
                settings = settings.with_(api_token=_load_or_create_token(token_file))
            _print_banner(settings, args.processes, own_urls, token_file)
            return _supervise(settings, args.processes)
        except KeyboardInterrupt:  # Ctrl-C before the services were up
            return 130
        finally:
            if embedded is not None:
                with _signals_ignored():  # a second Ctrl-C must not strand the servers
                    embedded.stop()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("processes", nargs="*", metavar="PROCESS",
                        help=f"which of {', '.join(PROCESS_NAMES)} to run (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.processes) - set(PROCESS_NAMES))
    if unknown:
        parser.error(f"unknown process {', '.join(unknown)}; choose from {', '.join(PROCESS_NAMES)}")
    args.processes = list(dict.fromkeys(args.processes)) or list(PROCESS_NAMES)
    return args


def _commands(names: list[str]) -> dict[str, list[str]]:
    # A node name per run, so `make worker` beside `make run` is a distinct Celery node.
    node = f"run{os.getpid()}@%h"
    every = {
        "api": [sys.executable, "-m", "services.api"],
        "reaper": [sys.executable, "-m", "services.reaper"],
        "worker": [sys.executable, "-m", "services.worker", "-n", node],
    }
    return {name: every[name] for name in names}


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "API_TOKEN": settings.api_token,
        "WORKER_CONCURRENCY": str(settings.worker_concurrency),
        # Lines reach the terminal as they are written, not when a buffer fills.
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _supervise(settings: Settings, names: list[str]) -> int:
    """Runs the children under the supervisor: prefixed, coloured output; see its module."""
    supervisor = Supervisor(Printer(sys.stdout), settings.drain_grace)
    env = _child_env(settings)
    for name, argv in _commands(names).items():
        # exec: the shell honcho starts becomes the service, so its process group is the
        # service's own and a group signal reaches Celery's pool children too.
        supervisor.add_process(name, "exec " + shlex.join(argv), env=env)
    done = threading.Event()
    if "api" in names:
        threading.Thread(target=_announce_ready, args=(supervisor, settings, done),
                         name="ready-probe", daemon=True).start()
    try:
        return supervisor.loop()
    finally:
        done.set()


def _announce_ready(supervisor: Supervisor, settings: Settings, done: threading.Event) -> None:
    url = f"{_api_base(settings)}/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    started = time.monotonic()
    while not done.is_set() and time.monotonic() - started < _READY_TIMEOUT:
        try:
            with opener.open(url, timeout=1.0) as response:
                if response.status == 200:
                    took = time.monotonic() - started
                    supervisor.say(f"ready in {took:.1f}s: {_api_base(settings)}")
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 while a dependency comes up
        done.wait(0.2)
    if not done.is_set():
        supervisor.say(f"API not ready after {_READY_TIMEOUT:.0f}s; see {settings.log_dir}/")


def _load_or_create_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    log.info("run.token_created", path=str(path))
    return token


def _api_base(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _print_banner(settings: Settings, names: list[str], own_urls: set[str],
                  token_file: Path) -> None:
    def source(url: str) -> str:
        return f"embedded, data in {settings.run_dir}/" if url in own_urls else "configured"

    token_origin = (f"saved in {token_file}" if os.environ.get("API_TOKEN", "") == ""
                    else "from API_TOKEN")
    lines = [
        "",
        f"  taskreaper: {', '.join(names)}",
        f"  PostgreSQL  {_redact(settings.database_url)}  ({source(settings.database_url)})",
        f"  Redis       {_redact(settings.redis_url)}  ({source(settings.redis_url)})",
        f"  Logs        {settings.log_dir}/",
    ]
    if "api" in names:
        base = _api_base(settings)
        lines += [
            f"  API         {base}  (health: {base}/readyz)",
            f"  API token   {settings.api_token}  ({token_origin})",
            f"  Try         curl -H 'Authorization: Bearer {settings.api_token}' "
            f"{base}/api/v1/system/status",
        ]
    lines += ["  Stop        Ctrl-C (the worker hands its tasks back to the queue first)", ""]
    print("\n".join(lines), flush=True)


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM during startup unwinds like Ctrl-C, so `finally` stops what was started."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
