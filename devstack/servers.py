"""What the embedded servers have in common: their error, and how a stuck one is ended."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil

from shared.processes import wait_gone

STOP_TIMEOUT = 15.0


class EmbeddedError(RuntimeError):
    """A server would not start or stop; the message carries its log."""


def kill_tree(proc: psutil.Process) -> None:
    """SIGKILL a server and everything it forked; psutil refuses a pid that was reused."""
    with contextlib.suppress(psutil.Error):
        victims = [*proc.children(recursive=True), proc]
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.kill()
        wait_gone(victims, 5.0)


def read_text(path: Path) -> str:
    """A config or log file, empty if the server has not written it yet."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
