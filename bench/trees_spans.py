"""Where a tree cancel's time goes before it answers: `Canceller.cancel()` run in this
process (through PgBouncer, as the API runs it), with the database and Redis steps it takes
timed one by one.

Nothing of the product is changed: the timers wrap methods on this process's own `Db`,
`TreeControl` and `Canceller` instances (attributes set on the instances), so every step
runs exactly as in the API; each span is when it began and how long it took, from the
start of the call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from shared.cancellation import Canceller

# (owner on the canceller, method, label, nested in the subtree transaction)
_STEPS = (
    ("db", "cancel_task", "the root's row (`cancel_one`: one statement, autocommit)", False),
    ("db", "lock_fences", "↳ the fence lock", True),
    ("db", "cancel_subtree", "↳ the running children's rows (`tree_subtree_cancel`, a walk "
                             "up from the tree's live rows)", True),
    ("db", "insert_audit", "↳ the audit row", True),
    ("trees", "_announce", "subtree announce: a PUBLISH per running child and per worker "
                           "(one pipeline)", False),
    ("trees", "_sweep", "the never-started children's rows, in batches (after the answer "
                        "in the API)", False),
    ("canceller", "announce", "the root's own announce", False),
)
WHOLE = "subtree transaction (pool acquire to COMMIT)"


class Spans:
    def __init__(self) -> None:
        self.p0 = 0.0
        self.spans: list[dict[str, Any]] = []

    def _add(self, label: str, began: float, ended: float, nested: bool) -> None:
        self.spans.append({"step": label, "at_ms": round((began - self.p0) * 1000, 2),
                           "ms": round((ended - began) * 1000, 2), "nested": nested})

    def _timed(self, fn: Callable[..., Awaitable[Any]], label: str, nested: bool
               ) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self._add(label, began, time.perf_counter(), nested)
        return timed

    def _transaction(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        @asynccontextmanager
        async def timed() -> AsyncIterator[Any]:
            began = time.perf_counter()
            async with fn() as conn:
                self._add("↳ pool acquire + BEGIN", began, time.perf_counter(), True)
                yield conn
                body_done = time.perf_counter()
            ended = time.perf_counter()
            self._add("↳ COMMIT (and the connection's release)", body_done, ended, True)
            self._add(WHOLE, began, ended, False)
        return timed

    def instrument(self, canceller: Canceller) -> None:
        owners = {"db": canceller.db, "trees": canceller.trees, "canceller": canceller}
        for owner, name, label, nested in _STEPS:
            obj = owners[owner]
            setattr(obj, name, self._timed(getattr(obj, name), label, nested))
        canceller.db.transaction = self._transaction(  # type: ignore[method-assign]
            canceller.db.transaction)

    async def cancel(self, canceller: Canceller, root: Any) -> dict[str, Any]:
        self.spans.clear()
        self.p0 = time.perf_counter()
        out = await canceller.cancel(root, by="bench-trees", reason="bench")
        took = (time.perf_counter() - self.p0) * 1000
        # The whole transaction begins before its nested steps: it sorts first.
        spans = sorted(self.spans, key=lambda s: (s["at_ms"], s["nested"]))
        outer = sum(s["ms"] for s in spans if not s["nested"])
        return {"via": "shared.cancellation.Canceller.cancel in-process (through PgBouncer)",
                "took_ms": round(took, 1), "changed": out.changed, "spans": spans,
                # Python between the steps: building events, logging, settling.
                "between_steps_ms": round(took - outer, 1)}
