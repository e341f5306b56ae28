"""`ask`: sends each prompt to a model server over a plain socket and waits for the answer.

Declared interruptible: a cancel is raised inside the blocking socket read, so a
model server that takes a minute (or never answers) does not delay the cancel.
"""

from __future__ import annotations

import socket
from typing import Annotated

from services.worker.actor import actor
from services.worker.context import TaskContext
from shared.params import Range


def _ask_once(host: str, port: int, prompt: str, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(prompt.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            part = conn.recv(65536)
            if not part:
                break
            data += part
    return data.decode(errors="replace").strip()


@actor(queue="default", interruptible=True)
def ask(
    ctx: TaskContext,
    prompts: list,
    host: str = "127.0.0.1",
    port: Annotated[int, Range(min=1, max=65535)] = 9,
    timeout: Annotated[float, Range(min=0.1, max=86_400)] = 600.0,
) -> None:
    ctx.heartbeat(done=len(ctx.checkpoint.saved), total=len(prompts))
    done = len(ctx.checkpoint.saved)
    for index, prompt in enumerate(prompts):
        if index in ctx.checkpoint:
            continue
        ctx.token.raise_if_cancelled()
        ctx.heartbeat(current=index + 1)
        answer = _ask_once(host, port, str(prompt), timeout)
        ctx.checkpoint.save(index, {"prompt": str(prompt), "answer": answer})
        done += 1
        ctx.heartbeat(done=done)
