"""`stubborn`: never looks at its cancel token, to rehearse the hard rungs of the ladder.

`mode=sleep` blocks in a plain sleep: the in-process watchdog has to end it.
`mode=gil` blocks inside C code that holds the GIL, so no other thread of the
process runs: only a kill from outside (the reaper, through the worker) ends it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Annotated, Literal

from services.worker.actor import actor
from services.worker.context import TaskContext
from shared.params import Range


def _hold_gil(seconds: float) -> None:
    # PyDLL keeps the GIL during the foreign call, unlike CDLL.
    # One long call: between calls the interpreter could hand the GIL to another thread.
    libc = ctypes.PyDLL(ctypes.util.find_library("c"))
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        libc.sleep(ctypes.c_uint(max(1, int(left))))


@actor(queue="default")
def stubborn(
    ctx: TaskContext,
    seconds: Annotated[float, Range(min=0, max=86_400)] = 60.0,
    mode: str = "sleep",
) -> None:
    if mode not in ("sleep", "gil"):
        raise ValueError("mode must be 'sleep' or 'gil'")
    how: Literal["sleep", "gil"] = mode  # type: ignore[assignment]
    ctx.heartbeat(done=0, total=1, current=1)
    if how == "gil":
        _hold_gil(seconds)
    else:
        time.sleep(seconds)
    ctx.heartbeat(done=1)
