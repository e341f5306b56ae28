"""In-memory stand-ins for PostgreSQL, Redis and the Celery workers, for unit tests that
run without any server.

`FakeDb` answers the `Db` methods the reaper and the worker's sidecar call, by the same
names and with the same shapes (a record is a dict). Each one follows its query in
shared/sql/queries.sql: the same filters, the same fencing by attempt, nothing more, so a
rule's outcome can be read back from the rows.
`FakeRedis` holds strings, hashes and sorted sets, and hands published messages to the
subscriptions opened on it. It runs no Lua: a script the code registers is looked up in
`scripts` by its text, and one nobody provided fails loudly.
`FakeWorkers` stands in for the reaper's `CeleryOps`: nodes with the requests they execute
or hold, answering kills, inspections and revokes as the workers' remote control does.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.db.cancels import WALK_START, Edge, SweepStep
from shared.db.rows import DueCancel, StaleExecution
from shared.states import EXECUTING, STOPPING


def now() -> datetime:
    return datetime.now(UTC)


def ago(seconds: float) -> datetime:
    return now() - timedelta(seconds=seconds)


def _seconds_since(at: datetime | None) -> float | None:
    return None if at is None else (now() - at).total_seconds()


class FakeDb:
    def __init__(self) -> None:
        self.tasks: dict[uuid.UUID, dict[str, Any]] = {}
        self.actors: dict[str, dict[str, Any]] = {}
        self.fences: dict[int, dict[str, Any]] = {}
        self.results: dict[tuple[uuid.UUID, int], dict[str, Any]] = {}
        # While set, every call fails as a dropped connection does.
        self.down: BaseException | None = None
        # Seconds each call takes: other coroutines run meanwhile, as they do around a
        # real round trip.
        self.latency = 0.0

    async def _reach(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.down is not None:
            raise self.down

    # -- arranging rows --------------------------------------------------------------------

    def add_task(self, *, actor: str = "distill", queue: str = "default",
                 status: str = "queued", **columns: Any) -> dict[str, Any]:
        """A row with the table's defaults, as a dict; returns a copy."""
        at = now()
        row: dict[str, Any] = {
            "id": uuid.uuid4(), "actor": actor, "queue": queue, "kwargs": {}, "status": status,
            "attempt": 0, "message_id": uuid.uuid4(), "eta": None, "done": 0, "failed": 0,
            "total": None, "current_chunk": None, "eta_seconds": None, "heartbeat_at": None,
            "created_at": at, "enqueued_at": at, "queued_at": at, "started_at": None,
            "finished_at": None, "worker": None, "pid": None, "cancel_requested_at": None,
            "cancel_reason": None, "cancel_by": None, "cancel_forced": None,
            "cancel_deadline": None, "outcome": None, "error": None, "requeues": 0,
            "resumes": 0, "parent_id": None, "root_id": None, "depth": 0, "children": 0}
        unknown = set(columns) - set(row)
        assert not unknown, f"no such task columns: {unknown}"
        row.update(columns)
        self.tasks[row["id"]] = row
        return dict(row)

    def add_fence(self, *, at: datetime | None = None, actor: str | None = None,
                  queue: str | None = None, queues: Sequence[str] = (), reason: str | None = None,
                  covered: int = 0, swept_at: datetime | None = None,
                  purged_at: datetime | None = None) -> int:
        fence_id = len(self.fences) + 1
        self.fences[fence_id] = {
            "id": fence_id, "at": at or now(), "actor": actor, "queue": queue, "reason": reason,
            "by": "test", "forced": False, "queues": list(queues), "covered": covered,
            "swept": 0, "swept_at": swept_at, "purged_at": purged_at}
        return fence_id

    # -- reading ---------------------------------------------------------------------------

    async def get_task(self, task_id: uuid.UUID) -> dict[str, Any] | None:
        await self._reach()
        row = self.tasks.get(task_id)
        return dict(row) if row is not None else None

    async def upsert_actor(self, name: str, queue: str, params: dict[str, Any],
                           options: dict[str, Any]) -> None:
        await self._reach()
        self.actors[name] = {"name": name, "queue": queue, "params": params, "options": options,
                             "updated_at": now()}

    async def get_actor(self, name: str) -> dict[str, Any] | None:
        await self._reach()
        actor = self.actors.get(name)
        return dict(actor) if actor is not None else None

    async def saved_chunks(self, task_id: uuid.UUID) -> set[int]:
        await self._reach()
        return {chunk for (tid, chunk), r in self.results.items() if tid == task_id and r["ok"]}

    # -- the worker's writes, fenced by attempt ----------------------------------------------

    async def save_result(self, task_id: uuid.UUID, attempt: int, chunk: int, ok: bool,
                          result: Any) -> bool:
        await self._reach()
        json.dumps(result)  # the client's jsonb codec refuses what JSON cannot hold
        row = self.tasks.get(task_id)
        if row is None or row["attempt"] != attempt or row["status"] not in EXECUTING:
            return False
        saved = self.results.get((task_id, chunk))
        if saved is not None and saved["ok"]:
            return False
        self.results[(task_id, chunk)] = {"chunk": chunk, "attempt": attempt, "ok": ok,
                                          "result": result, "created_at": now()}
        return True

    # -- the reaper's reads and verdicts -----------------------------------------------------

    async def stale_executions(self, timeout: float) -> list[StaleExecution]:
        await self._reach()
        cutoff = ago(timeout)
        return [StaleExecution.from_row(r) for r in self.tasks.values()
                if r["status"] in EXECUTING and (r["heartbeat_at"] or r["started_at"]) is not None
                and (r["heartbeat_at"] or r["started_at"]) < cutoff]

    async def due_cancellations(self, margin: float) -> list[DueCancel]:
        await self._reach()
        cutoff = ago(margin)
        return [DueCancel.from_row(
                    {**r, "silent_for": _seconds_since(r["heartbeat_at"] or r["started_at"])})
                for r in self.tasks.values()
                if r["status"] in STOPPING and r["cancel_deadline"] is not None
                and r["cancel_deadline"] <= cutoff]

    async def mark_dead(self, task_id: uuid.UUID, attempt: int, outcome: str) -> str | None:
        await self._reach()
        row = self.tasks.get(task_id)
        if row is None or row["attempt"] != attempt or row["status"] not in EXECUTING:
            return None
        verdict = {"cancelling": "cancelled", "pausing": "paused"}
        row.update(status=verdict.get(row["status"], "lost"), outcome=outcome, finished_at=now())
        return str(row["status"])

    async def requeue_execution(self, task_id: uuid.UUID, attempt: int, message_id: uuid.UUID,
                                eta: datetime | None = None, error: str | None = None
                                ) -> dict[str, Any] | None:
        await self._reach()
        row = self.tasks.get(task_id)
        if row is None or row["attempt"] != attempt or row["status"] != "running":
            return None
        row.update(status="queued", message_id=message_id, enqueued_at=now(), heartbeat_at=None,
                   queued_at=now(), eta=eta, error=error, resumes=row["resumes"] + 1)
        return dict(row)

    async def active_by_ids(self, ids: Sequence[uuid.UUID]) -> list[dict[str, Any]]:
        await self._reach()
        return [{**_pick(r, "id", "status", "attempt", "message_id", "finished_at"),
                 "finished_ago": _seconds_since(r["finished_at"])}
                for tid in ids if (r := self.tasks.get(uuid.UUID(str(tid)))) is not None]

    async def stranded_queued(self, older_than: float,
                              after: tuple[datetime, uuid.UUID] | None, limit: int
                              ) -> list[dict[str, Any]]:
        await self._reach()
        cutoff = ago(older_than)
        rows = sorted((r for r in self.tasks.values()
                       if r["status"] == "queued" and r["enqueued_at"] < cutoff
                       and (after is None or (r["enqueued_at"], r["id"]) > after)
                       and (r["eta"] is None or r["eta"] < cutoff)
                       and not any(_covers(f, r) for f in self.fences.values())),
                      key=lambda r: (r["enqueued_at"], r["id"]))
        return [{**_pick(r, "id", "actor", "queue", "message_id", "requeues", "enqueued_at"),
                 "queued_epoch": r["queued_at"].timestamp()} for r in rows[:limit]]

    async def requeue_message(self, task_id: uuid.UUID, old: uuid.UUID, new: uuid.UUID
                              ) -> dict[str, Any] | None:
        await self._reach()
        row = self.tasks.get(task_id)
        if row is None or row["message_id"] != old or row["status"] != "queued":
            return None
        row.update(message_id=new, enqueued_at=now(), requeues=row["requeues"] + 1)
        return dict(row)

    async def mark_queued_lost(self, task_id: uuid.UUID, message_id: uuid.UUID) -> str | None:
        await self._reach()
        row = self.tasks.get(task_id)
        if row is None or row["message_id"] != message_id or row["status"] != "queued":
            return None
        row.update(status="lost", outcome="gone", finished_at=now())
        return "lost"

    async def prune_history(self, days: int, limit: int = 1000) -> int:
        await self._reach()
        cutoff = ago(days * 86400)
        old = [tid for tid, r in self.tasks.items()
               if r["finished_at"] is not None and r["finished_at"] < cutoff][:limit]
        for tid in old:
            del self.tasks[tid]
        return len(old)

    async def prune_audit(self, days: int, limit: int = 1000) -> int:
        # No audit rows here: only the settled fences older than the period go.
        await self._reach()
        cutoff = ago(days * 86400)
        old = [fid for fid, f in self.fences.items()
               if f["at"] < cutoff and f["swept_at"] and f["purged_at"]]
        for fid in old:
            del self.fences[fid]
        return len(old)

    async def fold_tallies(self) -> None:
        await self._reach()

    # -- job trees (the reaper's tree rules) ----------------------------------------------

    _OPEN = ("queued", "running", "cancelling", "pausing", "paused", "waiting")

    async def waiting_settled(self, limit: int) -> list[uuid.UUID]:
        await self._reach()
        open_parents = {r.get("parent_id") for r in self.tasks.values() if r["status"] in self._OPEN}
        return [tid for tid, r in self.tasks.items()
                if r["status"] == "waiting" and tid not in open_parents][:limit]

    async def active_roots(self, limit: int) -> list[uuid.UUID]:
        await self._reach()
        roots = {r.get("root_id") or r["id"] for r in self.tasks.values()
                 if r["status"] in ("running", "cancelling", "pausing")
                 and (r.get("root_id") or r.get("children"))}
        return list(roots)[:limit]

    async def orphaned_parents(self, limit: int) -> list[uuid.UUID]:
        await self._reach()
        found = []
        for r in self.tasks.values():
            parent = self.tasks.get(r.get("parent_id"))  # type: ignore[arg-type]
            if (parent is not None and r["status"] in self._OPEN and r["status"] != "cancelling"
                    and parent["status"] in ("cancelling", "cancelled")
                    and parent["id"] not in found):
                found.append(parent["id"])
        return found[:limit]

    # -- cancel fences -----------------------------------------------------------------------

    async def open_fences(self) -> list[dict[str, Any]]:
        await self._reach()
        return [{**f, "at_epoch": f["at"].timestamp(), "age": _seconds_since(f["at"])}
                for _, f in sorted(self.fences.items())
                if f["swept_at"] is None or f["purged_at"] is None]

    async def sweep_fence(self, fence: dict[str, Any], batch: int, conn: Any = None) -> int:
        await self._reach()
        covered = sorted((r for r in self.tasks.values() if _covers(fence, r)),
                         key=lambda r: r["queued_at"])[:batch]
        for row in covered:
            row.update(status="cancelled", finished_at=now(), outcome="never_started",
                       cancel_requested_at=fence["at"], cancel_reason=fence["reason"],
                       cancel_by=fence["by"], cancel_forced=fence["forced"])
        if covered:
            self.fences[fence["id"]]["swept"] += len(covered)
        return len(covered)

    async def sweep_fence_range(self, fence: dict[str, Any], batch: int, *,
                                paused: bool = False, descending: bool = False,
                                after: Edge | None = None, before: Edge | None = None,
                                conn: Any = None) -> SweepStep:
        await self._reach()
        status = "paused" if paused else "queued"
        low, high = after or WALK_START, before or (fence["at"], uuid.UUID(int=0))
        taken = sorted((r for r in self.tasks.values()
                        if _covers(fence, {**r, "status": "queued"}) and r["status"] == status
                        and low < (r["queued_at"], r["id"]) < high),
                       key=lambda r: (r["queued_at"], r["id"]), reverse=descending)[:batch]
        for row in taken:
            row.update(status="cancelled", finished_at=now(),
                       outcome=(row["outcome"] if paused else None) or "never_started",
                       cancel_requested_at=fence["at"], cancel_reason=fence["reason"],
                       cancel_by=fence["by"], cancel_forced=fence["forced"])
        edge = (taken[-1]["queued_at"], taken[-1]["id"]) if taken else None
        return SweepStep(swept=len(taken), taken=len(taken), edge=edge)

    async def fence_progress(self, fence_id: int, swept: int) -> None:
        await self._reach()
        self.fences[fence_id]["swept"] += swept

    async def fence_leftovers(self, fence: dict[str, Any]) -> bool:
        await self._reach()
        return any(_covers(fence, {**r, "status": "queued"}) for r in self.tasks.values()
                   if r["status"] in ("queued", "paused"))

    async def fence_swept(self, fence_id: int) -> None:
        await self._reach()
        self.fences[fence_id]["swept_at"] = now()

    async def fence_purged(self, fence_id: int) -> None:
        await self._reach()
        self.fences[fence_id]["purged_at"] = now()


def _pick(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: row[n] for n in names}


def _covers(fence: dict[str, Any], row: dict[str, Any]) -> bool:
    """The fence covers a queued row that entered the queue before it, within its scope."""
    return (row["status"] == "queued" and row["queued_at"] < fence["at"]
            and fence["actor"] in (None, row["actor"]) and fence["queue"] in (None, row["queue"]))


# -- Redis ------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bound(value: Any) -> tuple[float, bool]:
    """A ZRANGEBYSCORE bound: the score and whether it is exclusive ("(1.5")."""
    text = _text(value)
    exclusive = text.startswith("(")
    return float(text.lstrip("(")), exclusive


def _within(score: float, low: Any, high: Any) -> bool:
    lo, lo_open = _bound(low)
    hi, hi_open = _bound(high)
    return (score > lo if lo_open else score >= lo) and (score < hi if hi_open else score <= hi)


class FakePubSub:
    def __init__(self, redis: FakeRedis, *, ignore_subscribe_messages: bool = False) -> None:
        self._redis = redis
        self._ignore = ignore_subscribe_messages
        self.channels: set[str] = set()
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> FakePubSub:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def subscribe(self, *channels: str) -> None:
        for channel in channels:
            self.channels.add(channel)
            if not self._ignore:
                self._inbox.put_nowait({"type": "subscribe", "channel": channel,
                                        "data": len(self.channels), "pattern": None})
        self._redis._subscriptions.add(self)

    async def unsubscribe(self, *channels: str) -> None:
        for channel in channels or tuple(self.channels):
            self.channels.discard(channel)

    def deliver(self, channel: str, data: str) -> None:
        self._inbox.put_nowait({"type": "message", "channel": channel, "data": data,
                                "pattern": None})

    async def get_message(self, ignore_subscribe_messages: bool = False,
                          timeout: float | None = 0.0) -> dict[str, Any] | None:
        while True:
            if not self._inbox.empty():
                message = self._inbox.get_nowait()
            elif timeout == 0:
                return None
            else:
                try:
                    message = await asyncio.wait_for(self._inbox.get(), timeout)
                except TimeoutError:
                    return None
            if message["type"] == "message" or not (ignore_subscribe_messages or self._ignore):
                return message

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        while self.channels:
            message = await self._inbox.get()
            if message["type"] == "message" or not self._ignore:
                yield message

    async def aclose(self) -> None:
        self.channels.clear()
        self._redis._subscriptions.discard(self)


class FakePipeline:
    """Queues commands and runs them in order on `execute`, as MULTI/EXEC would."""

    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self._queued: list[Coroutine[Any, Any, Any]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for command in self._queued:
            command.close()  # never sent: no "never awaited" warning either
        self._queued.clear()

    def __getattr__(self, name: str) -> Callable[..., FakePipeline]:
        command = getattr(self._redis, name)

        def queue(*args: Any, **kwargs: Any) -> FakePipeline:
            self._queued.append(command(*args, **kwargs))
            return self

        return queue

    async def execute(self) -> list[Any]:
        queued, self._queued = self._queued, []
        return [await command for command in queued]


class FakeRedis:
    def __init__(self) -> None:
        self.strings: dict[str, str] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        # Lua script text -> what it does, for the scripts a test stands in for.
        self.scripts: dict[str, Callable[..., Awaitable[Any]]] = {}
        self._subscriptions: set[FakePubSub] = set()

    async def aclose(self) -> None:
        self._subscriptions.clear()

    # strings
    async def get(self, name: str) -> str | None:
        return self.strings.get(name)

    async def set(self, name: str, value: Any, *, nx: bool = False, **expiry: Any) -> bool | None:
        if nx and name in self.strings:
            return None
        self.strings[name] = _text(value)
        return True

    async def getdel(self, name: str) -> str | None:
        return self.strings.pop(name, None)

    async def delete(self, *names: str) -> int:
        found = 0
        for store in (self.strings, self.hashes, self.zsets):
            for name in names:
                found += store.pop(name, None) is not None
        return found

    # hashes
    async def hset(self, name: str, key: str | None = None, value: Any = None,
                   mapping: dict[str, Any] | None = None) -> int:
        fields = {**({key: value} if key is not None else {}), **(mapping or {})}
        target = self.hashes.setdefault(name, {})
        added = len(set(fields) - set(target))
        target.update({k: _text(v) for k, v in fields.items()})
        return added

    async def hget(self, name: str, key: str) -> str | None:
        return self.hashes.get(name, {}).get(key)

    async def hmget(self, name: str, keys: Iterable[str]) -> list[str | None]:
        return [self.hashes.get(name, {}).get(k) for k in keys]

    async def hgetall(self, name: str) -> dict[str, str]:
        return dict(self.hashes.get(name, {}))

    async def hdel(self, name: str, *keys: str) -> int:
        target = self.hashes.get(name, {})
        return sum(target.pop(k, None) is not None for k in keys)

    # sorted sets
    async def zadd(self, name: str, mapping: dict[Any, float], *, nx: bool = False) -> int:
        target = self.zsets.setdefault(name, {})
        added = 0
        for member, score in mapping.items():
            member = _text(member)
            added += member not in target
            if not (nx and member in target):
                target[member] = float(score)
        return added

    async def zrem(self, name: str, *members: Any) -> int:
        target = self.zsets.get(name, {})
        return sum(target.pop(_text(m), None) is not None for m in members)

    async def zscore(self, name: str, member: Any) -> float | None:
        return self.zsets.get(name, {}).get(_text(member))

    async def zmscore(self, name: str, members: Iterable[Any]) -> list[float | None]:
        return [self.zsets.get(name, {}).get(_text(m)) for m in members]

    async def zrangebyscore(self, name: str, low: Any, high: Any, *, withscores: bool = False
                            ) -> list[Any]:
        found = sorted(((m, s) for m, s in self.zsets.get(name, {}).items()
                        if _within(s, low, high)), key=lambda item: (item[1], item[0]))
        return found if withscores else [m for m, _ in found]

    async def zremrangebyscore(self, name: str, low: Any, high: Any) -> int:
        doomed = await self.zrangebyscore(name, low, high)
        return await self.zrem(name, *doomed) if doomed else 0

    # pub/sub
    def pubsub(self, *, ignore_subscribe_messages: bool = False) -> FakePubSub:
        return FakePubSub(self, ignore_subscribe_messages=ignore_subscribe_messages)

    async def publish(self, channel: str, message: Any) -> int:
        receivers = [s for s in self._subscriptions if channel in s.channels]
        for subscription in receivers:
            subscription.deliver(channel, _text(message))
        return len(receivers)

    # pipelines and scripts
    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def register_script(self, script: str) -> Callable[..., Awaitable[Any]]:
        async def run(keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
            handler = self.scripts.get(script)
            if handler is None:
                raise NotImplementedError("FakeRedis runs no Lua; put a stand-in in `scripts`")
            return await handler(keys=list(keys), args=list(args))

        return run


# -- the Celery workers, as the reaper reaches them ----------------------------------------------


class FakeCelery:
    """The Celery app, as far as publishing a message goes: what was sent, in order."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_task(self, name: str, args: Any = None, kwargs: dict[str, Any] | None = None, *,
                  task_id: str | None = None, queue: str | None = None, eta: Any = None,
                  headers: dict[str, Any] | None = None, **options: Any) -> None:
        self.sent.append({"name": name, "kwargs": kwargs or {}, "id": task_id, "queue": queue,
                          "eta": eta, "headers": headers or {}})


class FakeWorkers:
    """Worker nodes and what they execute; a node in `silent` answers no broadcast (its
    host is gone or cut off)."""

    def __init__(self) -> None:
        self.celery = FakeCelery()
        self.executing: dict[str, dict[str, dict[str, Any]]] = {}
        self.waiting: dict[str, list[dict[str, Any]]] = {}
        self.revoked: list[str] = []
        self.silent: set[str] = set()

    def execute(self, node: str, task_id: Any, message_id: Any, *, pid: int = 4242,
                name: str = "distill") -> dict[str, Any]:
        request = {"id": str(message_id), "name": name, "kwargs": {"task_id": str(task_id)},
                   "worker_pid": pid}
        self.executing.setdefault(node, {})[str(message_id)] = request
        return request

    def runs(self, message_id: Any) -> bool:
        return any(str(message_id) in requests for requests in self.executing.values())

    def _answering(self, nodes: Iterable[str] | None) -> list[str]:
        names = self.executing.keys() | self.waiting.keys() if nodes is None else nodes
        return [n for n in names if n not in self.silent
                and (n in self.executing or n in self.waiting)]

    async def revoke(self, message_ids: list[str]) -> None:
        self.revoked.extend(message_ids)

    async def kill(self, *, message_id: str, task_id: str | None, node: str | None,
                   pid: int | None = None, pid_started: float | None = None,
                   timeout: float = 1.0) -> list[dict[str, Any]]:
        replies = []
        for name in self._answering([node] if node else None):
            requests = self.executing.get(name, {})
            req = requests.get(str(message_id))
            if req is None or (task_id is not None and req["kwargs"]["task_id"] != task_id):
                replies.append({"ok": True, "killed": False, "why": "not executing here"})
            elif pid is not None and req["worker_pid"] != pid:
                replies.append({"ok": True, "killed": False,
                                "why": f"executing in pid {req['worker_pid']}, not {pid}"})
            else:
                del requests[str(message_id)]
                replies.append({"ok": True, "killed": True, "pid": req["worker_pid"]})
        return replies

    async def active(self, timeout: float = 1.0, nodes: list[str] | None = None
                     ) -> dict[str, list[dict[str, Any]]]:
        return {n: list(self.executing.get(n, {}).values()) for n in self._answering(nodes)}

    async def reserved_and_scheduled(self, timeout: float = 1.0
                                     ) -> dict[str, list[dict[str, Any]]]:
        return {n: list(self.waiting.get(n, [])) for n in self._answering(None)}

    def close(self) -> None:
        pass
