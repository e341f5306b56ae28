"""Task states and the transitions between them.

`TRANSITIONS` is the one table of every move a task's row can make; the named sets
below are read off it, never written out by hand. tests/test_states.py checks the table
against every `UPDATE tasks SET status ...` in the SQL, both ways, so a move the SQL
learns without the table (or a move the table keeps that the SQL lost) fails a test.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    PAUSING = "pausing"
    PAUSED = "paused"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class Event(StrEnum):
    """What moves a task from one state to another."""

    CLAIM = "claim"      # a worker takes the task: the only way into `running` (invariant 2)
    FINISH = "finish"    # the execution, or its host, records how it ended
    CANCEL = "cancel"    # the ladder's first rung: one, cancel-all, time limit, force-kill
    REAP = "reap"        # the reaper settles what no live execution will
    REQUEUE = "requeue"  # a new attempt of a running execution: retry, automatic resume,
                         # preemption (a drain, the resource guard)
    RESUME = "resume"    # an operator's explicit resume, from the checkpoint
    PAUSE = "pause"      # an operator's pause: one task, or pause-all
    SETTLE = "settle"    # a parent's own code ended, or the last of its children did


_S, _E = TaskStatus, Event

# from-state -> {to-state: the events that make that move}. A task enters at INITIAL.
TRANSITIONS: Mapping[TaskStatus, Mapping[TaskStatus, frozenset[Event]]] = {
    _S.QUEUED: {
        _S.RUNNING: frozenset({_E.CLAIM}),
        # Never started: a cancel, a cancel-all's fence (met by the claim or the sweep),
        # force-kill.
        _S.CANCELLED: frozenset({_E.CANCEL}),
        # Its message is in no queue and on no worker, and was already published again once.
        _S.LOST: frozenset({_E.REAP}),
        # Never started: it waits, holding nothing, until a resume gives it a new message.
        _S.PAUSED: frozenset({_E.PAUSE}),
    },
    _S.RUNNING: {
        # A redelivered message takes over once the lease expired: a new attempt.
        _S.RUNNING: frozenset({_E.CLAIM}),
        # Retry, automatic resume of a zombie, a claim whose answer never reached its worker
        # undone for the retried delivery, or preempted: its worker drains (a deploy) and a
        # new attempt goes on from the checkpoint elsewhere.
        _S.QUEUED: frozenset({_E.REQUEUE}),
        # Asked to stop and keep its checkpoint, within a grace period like a cancel's.
        _S.PAUSING: frozenset({_E.PAUSE}),
        _S.SUCCEEDED: frozenset({_E.FINISH}),
        _S.FAILED: frozenset({_E.FINISH}),
        # Its own code ended and children of it have not: it waits, holding no process.
        _S.WAITING: frozenset({_E.SETTLE}),
        _S.CANCELLING: frozenset({_E.CANCEL}),
        # force-kill of an execution on this host: killed at once, no grace.
        _S.CANCELLED: frozenset({_E.CANCEL}),
        # A zombie: no heartbeat, and active nowhere.
        _S.LOST: frozenset({_E.REAP}),
    },
    _S.CANCELLING: {
        # force-kill of another host's execution: the deadline is pulled in to now.
        _S.CANCELLING: frozenset({_E.CANCEL}),
        # Stopped cooperatively or killed, found gone by the reaper, or killed by
        # force-kill on this host.
        _S.CANCELLED: frozenset({_E.FINISH, _E.REAP, _E.CANCEL}),
        # Ended before it saw the cancel: the state matches what happened (invariant 7).
        _S.SUCCEEDED: frozenset({_E.FINISH}),
        _S.FAILED: frozenset({_E.FINISH}),
    },
    _S.PAUSING: {
        # Stopped and saved its work, or killed when its grace ran out (by its own worker,
        # or by the reaper, which also settles one whose process is gone).
        _S.PAUSED: frozenset({_E.FINISH, _E.REAP}),
        # Resumed while it was stopping: once stopped (or killed, or found gone) a new attempt
        # goes on from the checkpoint under a fresh message.
        _S.QUEUED: frozenset({_E.REQUEUE}),
        # Ended before it saw the pause (a parent with children left waits for them).
        _S.SUCCEEDED: frozenset({_E.FINISH}),
        _S.FAILED: frozenset({_E.FINISH}),
        _S.WAITING: frozenset({_E.SETTLE}),
        # A cancel wins over a pause; force-kill on this host ends it at once.
        _S.CANCELLING: frozenset({_E.CANCEL}),
        _S.CANCELLED: frozenset({_E.CANCEL}),
    },
    # Stable: no process, no message, its checkpoint kept. Nothing reaps it; only an
    # operator moves it on.
    _S.PAUSED: {
        _S.QUEUED: frozenset({_E.RESUME}),
        _S.CANCELLED: frozenset({_E.CANCEL}),
    },
    # A parent whose children have not all ended. When the last one has: `succeeded`, or
    # `failed` when a child failed or was lost, or back to `queued` to run the actor's
    # `on_children_done` step as a new attempt. A cancel ends it at once (it holds no
    # process) along with its subtree.
    _S.WAITING: {
        _S.SUCCEEDED: frozenset({_E.SETTLE}),
        _S.FAILED: frozenset({_E.SETTLE}),
        _S.QUEUED: frozenset({_E.SETTLE}),
        _S.CANCELLED: frozenset({_E.CANCEL}),
    },
    _S.SUCCEEDED: {},
    _S.FAILED: {_S.QUEUED: frozenset({_E.RESUME})},
    _S.CANCELLED: {_S.QUEUED: frozenset({_E.RESUME})},
    _S.LOST: {_S.QUEUED: frozenset({_E.RESUME})},
}

INITIAL = TaskStatus.QUEUED


def can_move(source: TaskStatus | str, target: TaskStatus | str,
             event: Event | None = None) -> bool:
    """Whether the table allows `source -> target` (by `event`, when one is named)."""
    events = TRANSITIONS.get(TaskStatus(source), {}).get(TaskStatus(target))
    return events is not None and (event is None or event in events)


def _sources(event: Event) -> frozenset[TaskStatus]:
    """States with a move by `event`."""
    return frozenset(s for s, moves in TRANSITIONS.items()
                     for events in moves.values() if event in events)


def _targets(event: Event) -> frozenset[TaskStatus]:
    """States a move by `event` leads to."""
    return frozenset(t for moves in TRANSITIONS.values()
                     for t, events in moves.items() if event in events)


# Terminal: nothing but an explicit resume leaves it.
TERMINAL = frozenset(s for s, moves in TRANSITIONS.items()
                     if all(events == {Event.RESUME} for events in moves.values()))
# Held: not finished, yet nothing in the system moves it on (no claim, no reaper, no
# execution); only an operator's resume or cancel does.
HELD = frozenset(s for s, moves in TRANSITIONS.items()
                 if moves and all(events <= {Event.RESUME, Event.CANCEL}
                                  for events in moves.values())) - TERMINAL
ACTIVE = frozenset(TaskStatus) - TERMINAL - HELD
RESUMABLE = _sources(Event.RESUME)
# A cancel acts on these; on a task already cancelling, only a forced one does anything.
CANCELLABLE = _sources(Event.CANCEL)
# Still active after a cancel: one is under way, and only a forced cancel adds anything.
CANCEL_PENDING = _targets(Event.CANCEL) & ACTIVE
# A live execution holds the task: it beats, saves chunks and records its end.
EXECUTING = _sources(Event.FINISH)
PAUSABLE = _sources(Event.PAUSE)
# A pause is under way: the execution saves its work and stops within its grace period.
PAUSE_PENDING = _targets(Event.PAUSE) & ACTIVE
# The execution was asked to stop (its token is set as soon as it learns of it).
STOPPING = CANCEL_PENDING | PAUSE_PENDING

# A child never starts under an ancestor in one of these: being cancelled or ended short of
# success (it is cancelled at its claim), or being paused or paused (it is paused).
STOPS_CHILDREN = CANCEL_PENDING | (TERMINAL - {TaskStatus.SUCCEEDED})
PAUSES_CHILDREN = PAUSE_PENDING | HELD
# A child that ended in one of these fails its parent (and, in a `fail_fast` tree, stops
# its siblings).
FAILS_PARENT = TERMINAL - {TaskStatus.SUCCEEDED, TaskStatus.CANCELLED}

# The order an operator reads states in: what needs attention first.
ATTENTION = (TaskStatus.RUNNING, TaskStatus.CANCELLING, TaskStatus.PAUSING, TaskStatus.QUEUED,
             TaskStatus.WAITING, TaskStatus.PAUSED, TaskStatus.FAILED, TaskStatus.LOST, TaskStatus.CANCELLED,
             TaskStatus.SUCCEEDED)


def describe() -> dict[str, Any]:
    """The table and its sets as plain JSON, for clients (the dashboard) that must not
    keep their own copy. Lists follow the enum's order."""
    def names(states: frozenset[TaskStatus]) -> list[str]:
        return [s.value for s in TaskStatus if s in states]

    return {
        "states": [s.value for s in TaskStatus],
        "initial": INITIAL.value,
        "active": names(ACTIVE),
        "terminal": names(TERMINAL),
        "resumable": names(RESUMABLE),
        "cancellable": names(CANCELLABLE),
        "cancel_pending": names(CANCEL_PENDING),
        "executing": names(EXECUTING),
        "held": names(HELD),
        "pausable": names(PAUSABLE),
        "pause_pending": names(PAUSE_PENDING),
        "attention": [s.value for s in ATTENTION],
        "transitions": [{"from": s.value, "to": t.value,
                         "events": [e.value for e in Event if e in events]}
                        for s, moves in TRANSITIONS.items() for t, events in moves.items()],
    }


class Outcome(StrEnum):
    """How a task that did not succeed came to an end."""

    NEVER_STARTED = "never_started"
    # Cancelled while queued for a next attempt, after running (preempted, retried, resumed).
    REQUEUED = "requeued"
    COOPERATIVE = "cooperative"
    KILLED = "killed"
    GONE = "gone"
    ERROR = "error"


class CancelReason(StrEnum):
    """Why an execution's token was set. A pause and a worker's drain stop the execution
    like a cancel does (the same token, the same grace), but it ends `paused` or back in
    `queued` rather than `cancelled`."""

    USER = "user"
    TIME_LIMIT = "time_limit"
    FORCE_KILL = "force-kill"
    PAUSE = "pause"
    SHUTDOWN = "shutdown"
    MEMORY_LIMIT = "memory_limit"
    # Tree reasons: an ancestor was cancelled, a sibling failed in a `fail_fast` tree, the
    # parent's own code failed.
    PARENT_CANCELLED = "parent_cancelled"
    FAIL_FAST = "fail_fast"
    PARENT_FAILED = "parent_failed"
