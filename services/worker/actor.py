"""Actors, declared Dramatiq-style on top of Celery.

    @actor(queue="default", time_limit=3600)
    def distill(ctx, text: str | None = None, chunks: int | None = None): ...

    task_id = distill.send(chunks=100)
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.params import describe

ActorFn = Callable[..., Any]


@dataclass(frozen=True)
class Actor:
    fn: ActorFn
    name: str
    queue: str = "default"
    time_limit: float | None = None
    max_retries: int = 0
    interruptible: bool = False
    auto_resume: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def options(self) -> dict[str, Any]:
        return {"time_limit": self.time_limit, "max_retries": self.max_retries,
                "interruptible": self.interruptible, "auto_resume": self.auto_resume}

    def send(self, *, _countdown: float | None = None, _eta: datetime | None = None,
             _queue: str | None = None, **kwargs: Any) -> str:
        """Creates the task's row and enqueues it; returns the task id."""
        from shared.settings import Settings

        return asyncio.run(self.send_async(Settings.from_env(), kwargs, countdown=_countdown,
                                           eta=_eta, queue=_queue))

    async def send_async(self, settings: Any, kwargs: dict[str, Any], *,
                         countdown: float | None = None, eta: datetime | None = None,
                         queue: str | None = None) -> str:
        from shared.broker import make_celery
        from shared.db import Db
        from shared.submit import submit

        db = await Db.connect(settings.database_url, min_size=1, max_size=1)
        celery = make_celery(settings)
        try:
            await db.upsert_actor(self.name, self.queue, self.params, self.options)
            row = await submit(db, celery, actor=self.name, kwargs=kwargs, queue=queue,
                               countdown=countdown, eta=eta)
            return str(row["id"])
        finally:
            celery.close()
            await db.close()


def actor(fn: ActorFn | None = None, *, name: str | None = None, queue: str = "default",
          time_limit: float | None = None, max_retries: int = 0, interruptible: bool = False,
          auto_resume: int = 0) -> Any:
    def decorate(f: ActorFn) -> Actor:
        return Actor(fn=f, name=name or f.__name__, queue=queue, time_limit=time_limit,
                     max_retries=max_retries, interruptible=interruptible,
                     auto_resume=auto_resume, params=describe(f))

    return decorate(fn) if fn is not None else decorate


def discover(modules: Iterable[types.ModuleType]) -> list[Actor]:
    found: dict[str, Actor] = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Actor):
                found[value.name] = value
    return sorted(found.values(), key=lambda a: a.name)
