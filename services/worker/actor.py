"""Actors, declared Dramatiq-style on top of Celery.

    @actor(queue="default", time_limit=3600, memory_limit="2GiB")
    def distill(ctx, text: str | None = None, chunks: int | None = None): ...

    task_id = distill.send(chunks=100)      # checked against distill's parameters
    task_id = distill.send_with_options(kwargs={"chunks": 100}, countdown=60)
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from shared.params import describe
from shared.sizes import parse_size

if TYPE_CHECKING:
    from services.worker.context import TaskContext
    from shared.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")
ActorFn = Callable[..., Any]


@dataclass(frozen=True)
class Actor(Generic[P, R]):
    """A task function and its options. `send` takes the function's own keyword
    arguments (minus the context), so a type checker catches a misspelt or missing one."""

    fn: Callable[Concatenate[TaskContext, P], R]
    name: str
    queue: str = "default"
    time_limit: float | None = None
    max_retries: int = 0
    interruptible: bool = False
    auto_resume: int = 0
    # Bytes of RSS its pool process may hold; None leaves it to WORKER_MEMORY_LIMIT.
    memory_limit: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # Job trees: a failed child cancels its siblings; a step run as this task once all of
    # its children ended (none failed), with the same context and arguments.
    fail_fast: bool = False
    on_children_done: Callable[..., Any] | None = None

    def __call__(self, ctx: TaskContext, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(ctx, *args, **kwargs)

    @property
    def options(self) -> dict[str, Any]:
        return {"time_limit": self.time_limit, "max_retries": self.max_retries,
                "interruptible": self.interruptible, "auto_resume": self.auto_resume,
                "memory_limit": self.memory_limit, "fail_fast": self.fail_fast,
                "on_children_done": self.on_children_done is not None}

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Creates the task's row and enqueues it; returns the task id. Arguments are
        stored as JSON, so they are given by name. `parent=<task id>` (unless the actor
        has a parameter of that name) makes it a child of that task; the checked spelling
        is `send_with_options(kwargs=..., parent=...)`."""
        if args:
            raise TypeError(f"{self.name}.send() takes keyword arguments only")
        given: dict[str, Any] = dict(kwargs)
        parent = given.pop("parent", None) if "parent" not in self.params else None
        return self.send_with_options(kwargs=given, parent=parent)

    def send_with_options(self, *, kwargs: dict[str, Any] | None = None,
                          countdown: float | None = None, eta: datetime | None = None,
                          queue: str | None = None, parent: str | None = None) -> str:
        """`send` with the scheduling options: a delay, a start time, another queue, and a
        parent task (the new task joins its tree: a cancel of the parent stops it too)."""
        from shared.settings import Settings

        return asyncio.run(self.send_async(Settings.from_env(), kwargs or {},
                                           countdown=countdown, eta=eta, queue=queue,
                                           parent=parent))

    async def send_async(self, settings: Settings, kwargs: dict[str, Any], *,
                         countdown: float | None = None, eta: datetime | None = None,
                         queue: str | None = None, parent: str | None = None) -> str:
        import uuid

        from shared.broker import make_celery
        from shared.db import Db
        from shared.submit import start_time, submit
        from shared.trees import ChildSpec, add_children, prepare

        db = await Db.connect(settings.database_url, min_size=1, max_size=1)
        celery = make_celery(settings)
        try:
            await db.upsert_actor(self.name, self.queue, self.params, self.options)
            if parent is not None:
                spec = ChildSpec(self.name, kwargs, queue=queue, eta=start_time(countdown, eta),
                                 fail_fast=self.fail_fast)
                added = await add_children(db, celery, settings, uuid.UUID(str(parent)),
                                           await prepare(db, [spec]))
                return str(added.made[0]["id"])
            row = await submit(db, celery, actor=self.name, kwargs=kwargs, queue=queue,
                               countdown=countdown, eta=eta)
            return str(row["id"])
        finally:
            celery.close()
            await db.close()


@overload
def actor(fn: Callable[Concatenate[TaskContext, P], R], *, name: str | None = None,
          queue: str = "default", time_limit: float | None = None, max_retries: int = 0,
          interruptible: bool = False, auto_resume: int = 0,
          memory_limit: int | str | None = None, fail_fast: bool = False,
          on_children_done: Callable[..., Any] | None = None) -> Actor[P, R]: ...


@overload
def actor(fn: None = None, *, name: str | None = None, queue: str = "default",
          time_limit: float | None = None, max_retries: int = 0, interruptible: bool = False,
          auto_resume: int = 0, memory_limit: int | str | None = None, fail_fast: bool = False,
          on_children_done: Callable[..., Any] | None = None
          ) -> Callable[[Callable[Concatenate[TaskContext, P], R]], Actor[P, R]]: ...


def actor(fn: Callable[..., Any] | None = None, *, name: str | None = None,
          queue: str = "default", time_limit: float | None = None, max_retries: int = 0,
          interruptible: bool = False, auto_resume: int = 0,
          memory_limit: int | str | None = None, fail_fast: bool = False,
          on_children_done: Callable[..., Any] | None = None) -> Any:
    """`memory_limit` is bytes or a size such as "512MB" or "1GiB" (see shared.sizes): past
    it, the task is cancelled with reason `memory_limit`, its checkpoint kept.

    Job trees: `on_children_done(ctx, **kwargs)` runs as the task once every child it
    spawned has ended and none failed (its return value is the task's); `fail_fast`
    cancels the siblings of a child that failed."""
    limit = parse_size(memory_limit)  # a bad size fails at import, not mid-task

    def decorate(f: Callable[..., Any]) -> Actor[Any, Any]:
        return Actor(fn=f, name=name or f.__name__, queue=queue, time_limit=time_limit,
                     max_retries=max_retries, interruptible=interruptible,
                     auto_resume=auto_resume, memory_limit=limit, params=describe(f),
                     fail_fast=fail_fast, on_children_done=on_children_done)

    return decorate(fn) if fn is not None else decorate


def discover(modules: Iterable[types.ModuleType]) -> list[Actor[Any, Any]]:
    found: dict[str, Actor[Any, Any]] = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Actor):
                found[value.name] = value
    return sorted(found.values(), key=lambda a: a.name)
