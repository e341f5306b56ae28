"""The local link that carries heartbeats from a worker's pool processes to its main process.

Once a beat each pool process reports its execution's progress (a `Beat`) over a Unix
datagram socket; the main process (the guardian) writes every report of the node in one
statement and answers each process with what its row says: written (and whether the row
asks it to stop: the fallback poll for a cancel whose event was lost), busy, gone (another
attempt holds the row, or it ended), or failed (the DB could not be reached). A pool process
whose reports nobody takes, or that hears no answer for a while, writes its own beats.

The sockets live in a directory only this user can enter, one per worker (its node name
and its main process id): `<tmp>/taskreaper-<uid>/<node digest>-<main pid>/`, `guardian`
for the main process, the pid for each pool process. Nothing here touches a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import structlog

from shared.db.beats import Beat, BeatState

log = structlog.get_logger("worker.beat_link")

GUARDIAN = "guardian"
# A socket's path must fit sockaddr_un (103 bytes on macOS, 107 on Linux).
MAX_PATH = 103
MAX_DATAGRAM = 4096


class Heard(StrEnum):
    WRITTEN = "written"  # the beat is in the row; `status` says whether to stop
    BUSY = "busy"  # another transaction held the row: the next beat tries again
    GONE = "gone"  # the row is no longer this attempt's, or it ended
    FAILED = "failed"  # the main process could not reach the DB this time


@dataclass(frozen=True, slots=True)
class Answer:
    task_id: str
    attempt: int
    heard: Heard
    status: str | None = None
    reason: str | None = None
    forced: bool = False

    @classmethod
    def to(cls, beat: Beat, state: BeatState | None) -> Answer:
        """What the node's statement found for one process's beat."""
        task_id = str(beat.task_id)
        if state is None or not state.holds(beat.attempt):
            return cls(task_id, beat.attempt, Heard.GONE)
        if not state.written:
            return cls(task_id, beat.attempt, Heard.BUSY)
        return cls(task_id, beat.attempt, Heard.WRITTEN, status=str(state.status),
                   reason=state.cancel_reason if state.stopping else None,
                   forced=bool(state.cancel_forced))

    def to_wire(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "attempt": self.attempt, "heard": str(self.heard),
                "status": self.status, "reason": self.reason, "forced": self.forced}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Self:
        return cls(str(data["task_id"]), int(data["attempt"]), Heard(data["heard"]),
                   data["status"], data["reason"], bool(data["forced"]))


def link_dir(node: str, main_pid: int) -> Path | None:
    """The worker's directory (made if missing), or None where no link can be had: each
    process then writes its own beats."""
    base = Path(tempfile.gettempdir()) / f"taskreaper-{os.getuid()}"
    folder = base / f"{hashlib.blake2s(node.encode(), digest_size=4).hexdigest()}-{main_pid}"
    if len(str(folder / str(2**22)).encode()) > MAX_PATH:
        log.warning("worker.beat_link_unavailable", path=str(folder), error="path too long")
        return None
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        st = base.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            # Another user could forge beats or answers there.
            log.warning("worker.beat_link_unavailable", path=str(base), error="not private")
            return None
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        log.warning("worker.beat_link_unavailable", path=str(folder), error=str(exc))
        return None
    return folder


class Endpoint:
    """A bound datagram socket read by an asyncio loop: each message, with the name its
    sender is bound to, goes to `on_message`. Opened and closed on the loop's thread."""

    def __init__(self, path: Path, on_message: Callable[[dict[str, Any], str], None]) -> None:
        self.path = path
        self._on_message = on_message
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by an earlier process that had this pid
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            raise
        loop.add_reader(sock.fileno(), self._readable)
        self._sock, self._loop = sock, loop

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data, sender = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("worker.beat_link_read_failed", error=str(exc))
                return
            try:
                self._on_message(json.loads(data), Path(sender).name if sender else "")
            except Exception as exc:
                log.warning("worker.beat_link_bad_message", error=repr(exc))

    def send(self, message: dict[str, Any], to: Path) -> bool:
        """False when it did not go: nobody listens at `to` (not yet, or no more), or its
        reader is so far behind that its queue is full."""
        return self.deliver(message, to) is None

    def deliver(self, message: dict[str, Any], to: Path) -> OSError | None:
        """None once sent, else why not: ConnectionRefusedError when a socket is left at
        `to` with nobody behind it."""
        if self._sock is None:
            return OSError("closed")
        try:
            self._sock.sendto(json.dumps(message).encode(), str(to))
        except OSError as exc:
            return exc
        return None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class PoolLink:
    """A pool process's end: reports its beats, hears the main process's answers."""

    def __init__(self, node: str, on_answer: Callable[[Answer], None], *,
                 main_pid: int | None = None, pid: int | None = None) -> None:
        self._node = node
        self._on_answer = on_answer
        self._main_pid = main_pid
        self._pid = pid
        self._endpoint: Endpoint | None = None
        self._guardian = Path()

    def open(self, loop: asyncio.AbstractEventLoop) -> bool:
        folder = link_dir(self._node, self._main_pid or os.getppid())
        if folder is None:
            return False
        endpoint = Endpoint(folder / str(self._pid or os.getpid()), self._received)
        try:
            endpoint.open(loop)
        except OSError as exc:
            log.warning("worker.beat_link_unavailable", path=str(endpoint.path), error=str(exc))
            return False
        self._endpoint, self._guardian = endpoint, folder / GUARDIAN
        return True

    def report(self, beat: Beat) -> bool:
        """Whether the main process's socket took the beat (else nobody will write it)."""
        return self._endpoint is not None and self._endpoint.send(beat.to_wire(), self._guardian)

    def _received(self, message: dict[str, Any], sender: str) -> None:
        if sender == GUARDIAN:
            self._on_answer(Answer.from_wire(message))

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None


class NodeLink:
    """The main process's end: the latest beat of each pool process, and the answers."""

    def __init__(self, node: str, *, pid: int | None = None) -> None:
        self._node = node
        self._pid = pid or os.getpid()
        self._endpoint: Endpoint | None = None
        self._folder: Path | None = None
        # pid -> its latest beat and when it came (monotonic)
        self._latest: dict[int, tuple[Beat, float]] = {}

    def open(self, loop: asyncio.AbstractEventLoop) -> bool:
        folder = link_dir(self._node, self._pid)
        if folder is None:
            return False
        endpoint = Endpoint(folder / GUARDIAN, self._received)
        try:
            endpoint.open(loop)
        except OSError as exc:
            log.warning("worker.beat_link_unavailable", path=str(endpoint.path), error=str(exc))
            return False
        self._endpoint, self._folder = endpoint, folder
        return True

    def _received(self, message: dict[str, Any], sender: str) -> None:
        if sender.isdigit():
            self._latest[int(sender)] = (Beat.from_wire(message), time.monotonic())

    def reports(self, within: float) -> list[tuple[int, Beat]]:
        """Each pool process's latest beat from the last `within` seconds, aged; a process
        silent for longer (dead, or stuck holding its GIL) is dropped."""
        now = time.monotonic()
        out = []
        for pid, (beat, at) in list(self._latest.items()):
            if now - at > within:
                del self._latest[pid]
            else:
                out.append((pid, replace(beat, age=now - at)))
        return out

    def answer(self, pid: int, answer: Answer) -> None:
        if self._endpoint is None or self._folder is None:
            return
        path = self._folder / str(pid)
        failed = self._endpoint.deliver(answer.to_wire(), path)
        if failed is None:
            return
        self._latest.pop(pid, None)  # it reports again if it is still there
        if isinstance(failed, ConnectionRefusedError):
            # The process is gone (pool processes never close theirs): its socket goes too.
            with contextlib.suppress(OSError):
                path.unlink()

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    def remove(self) -> None:
        """Deletes the worker's directory, sockets and all: at its main process's exit."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
