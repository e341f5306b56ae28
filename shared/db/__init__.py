"""All PostgreSQL access: one thin class over an asyncpg pool, SQL in named queries
(shared/sql/queries.sql), methods named after what they mean.

`Db` is put together from one part per concern: reading and submitting tasks, the worker's
execution, the cancel ladder, pause and resume, the reaper's upkeep.
"""

from __future__ import annotations

from shared.db.base import SERVER_SETTINGS, Record, create_pool, queries
from shared.db.cancels import CancelQueries
from shared.db.execution import ClaimBusy, ExecutionQueries
from shared.db.pages import PageQueries
from shared.db.pauses import PauseQueries
from shared.db.reaper import ReaperQueries
from shared.db.resources import ResourceQueries
from shared.db.tasks import TaskQueries
from shared.db.tokens import TokenQueries
from shared.db.trees import NewChild, TreeQueries

__all__ = ["SERVER_SETTINGS", "ClaimBusy", "Db", "NewChild", "Record", "create_pool", "queries"]


class Db(TaskQueries, ExecutionQueries, CancelQueries, PauseQueries, ReaperQueries,
         ResourceQueries, PageQueries, TokenQueries, TreeQueries):
    pass
