"""The transition table in shared/states.py against the SQL that moves tasks, both ways.

Every `UPDATE tasks SET status ...` in shared/sql and shared/migrations is read by
tests/sql_states.py; each (from, to) it can perform must be in the table, and each
move in the table must be one some statement performs (or be justified below).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from shared.states import (
    ACTIVE,
    ATTENTION,
    CANCEL_PENDING,
    CANCELLABLE,
    EXECUTING,
    FAILS_PARENT,
    HELD,
    INITIAL,
    PAUSABLE,
    PAUSE_PENDING,
    PAUSES_CHILDREN,
    RESUMABLE,
    STOPPING,
    STOPS_CHILDREN,
    TERMINAL,
    TRANSITIONS,
    Event,
    TaskStatus,
    can_move,
    describe,
)
from tests.sql_states import Reading, SqlShapeError, read

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SQL_FILES = [*sorted((ROOT / "shared" / "sql").glob("*.sql")),
             *sorted((ROOT / "shared" / "migrations").glob("*.sql"))]
STATES = [s.value for s in TaskStatus]

# The values of the parameters that decide a new state, as the callers pass them. The SQL
# itself does not limit them: a caller passing another value would make other moves.
DOMAINS: dict[tuple[str, str], list[Any]] = {
    # Db.finish_task: how an execution ended, as the worker's runtime, sidecar and guardian
    # record it.
    ("finish_task", "$3"): [s.value for s in (TaskStatus.SUCCEEDED, TaskStatus.FAILED,
                                              TaskStatus.CANCELLED)],
    # Canceller.resume passes RESUMABLE.
    ("resume_task", "$3"): [frozenset(s.value for s in RESUMABLE)],
}

# Moves in the table that no statement makes, each with the reason it stays.
JUSTIFIED: dict[tuple[TaskStatus, TaskStatus], str] = {}

# The lists of states a statement may name: the named sets, and these read off them.
NAMED_LISTS = {
    frozenset(s.value for s in group) for group in (
        ACTIVE, TERMINAL, EXECUTING, STOPPING, CANCELLABLE, frozenset(TaskStatus),
        # What a cancel moves to `cancelling`: executing with no cancel under way.
        EXECUTING - CANCEL_PENDING,
        # What a cancel ends at once: no execution holds it.
        CANCELLABLE - EXECUTING,
        PAUSABLE,
        # What a cancel fence covers: what would run if nothing stopped it (not a waiting
        # parent, whose code has run: cancel-all ends those itself).
        HELD | {INITIAL},
        # What holds a child back at its claim: an ancestor stopping or stopped.
        STOPS_CHILDREN, PAUSES_CHILDREN, STOPS_CHILDREN | PAUSES_CHILDREN,
        RESUMABLE, FAILS_PARENT,
        # A tree's live rows: what holds a process, and parents waiting for children.
        EXECUTING | {TaskStatus.WAITING},
        # What a cancel still changes; a parent cancelled or being cancelled.
        CANCELLABLE - CANCEL_PENDING, CANCEL_PENDING | {TaskStatus.CANCELLED},
    )}

# Lists in migrations that a later one replaced, as they were then: history, not what runs.
REPLACED: dict[str, dict[frozenset[str], str]] = {
    "001_tasks.sql": {
        frozenset(STATES) - {"pausing", "paused", "waiting"}:
            "the CHECK constraint, replaced in 005",
        frozenset({"queued", "running", "cancelling"}): "tasks_active_idx, replaced in 005",
    },
    "005_pause_and_preempt.sql": {
        frozenset(STATES) - {"waiting"}: "the CHECK constraint, replaced in 008",
        # Partial indexes kept as they are: no query that uses them asks for waiting rows
        # (a waiting parent has no execution and no message to look up).
        frozenset({"queued", "running", "cancelling", "pausing"}):
            "tasks_active_idx: the states with an execution or a message in flight",
        frozenset({"queued", "running", "cancelling", "pausing", "paused"}):
            "tasks_unfinished_message_idx, replaced in 008",
    },
}


def table_moves() -> set[tuple[str, str]]:
    return {(s.value, t.value) for s, moves in TRANSITIONS.items() for t in moves}


def read_sql(extra: str = "") -> Reading:
    sources = {p.name: p.read_text() for p in SQL_FILES}
    if extra:
        sources["extra.sql"] = extra
    return read(sources, STATES, DOMAINS)


def unlisted(reading: Reading) -> dict[tuple[str, str], list[str]]:
    """Moves the SQL makes that the table does not have, with the queries making them."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for move in sorted(reading.moves):
        if (move.source, move.target) not in table_moves():
            found[(move.source, move.target)].append(move.query)
    return dict(found)


@pytest.fixture(scope="module")
def reading() -> Reading:
    return read_sql()


def test_every_move_the_sql_makes_is_in_the_table(reading: Reading) -> None:
    assert reading.moves, "no UPDATE of tasks.status found: is the SQL where this test looks?"
    assert unlisted(reading) == {}


def test_every_move_in_the_table_is_one_the_sql_makes(reading: Reading) -> None:
    made = {(m.source, m.target) for m in reading.moves}
    justified = {(s.value, t.value) for s, t in JUSTIFIED}
    assert table_moves() - made - justified == set()
    assert justified <= table_moves() - made, "a justification for a move the SQL makes"


def test_a_move_added_to_the_sql_alone_fails_the_check() -> None:
    # given a new statement bringing a succeeded task back without the table knowing
    extra = ("-- name: revive\n"
             "UPDATE tasks SET status = 'queued' WHERE id = $1 AND status = 'succeeded';\n")

    # when the SQL is read with it
    found = unlisted(read_sql(extra))

    # then the move is reported, with the query that makes it
    assert found.get(("succeeded", "queued")) == ["revive"]
    assert ("succeeded", "queued") not in unlisted(read_sql())


def test_every_state_the_sql_names_exists(reading: Reading) -> None:
    assert reading.named, "no state literal found"
    assert reading.named <= set(STATES)


def test_the_check_constraint_allows_exactly_the_states(reading: Reading) -> None:
    assert reading.check == frozenset(STATES)


def test_tasks_enter_at_the_initial_state(reading: Reading) -> None:
    assert reading.entries and {state for _, state in reading.entries} == {INITIAL.value}


def test_every_list_of_states_in_the_sql_is_a_named_set(reading: Reading) -> None:
    assert reading.lists
    for path in SQL_FILES:
        lists = read({path.name: path.read_text()}, STATES, DOMAINS).lists
        history = REPLACED.get(path.name, {})
        assert lists - history.keys() <= NAMED_LISTS, (path.name, lists - NAMED_LISTS)
        assert history.keys() <= lists, f"{path.name}: a replaced list it does not have"


def test_the_reader_evaluates_cases_ctes_and_parameters() -> None:
    sql = """
-- name: verdict
UPDATE tasks SET status = CASE WHEN status = 'cancelling' THEN 'cancelled' ELSE 'lost' END
WHERE id = $1 AND status IN ('running', 'cancelling');
-- name: local
WITH doomed AS (
    SELECT id, worker = ANY($2::text[]) AND status <> 'queued' AS remote FROM tasks
    WHERE status IN ('queued', 'running') FOR UPDATE
)
UPDATE tasks t SET status = CASE WHEN doomed.remote THEN 'cancelling' ELSE 'cancelled' END
FROM doomed WHERE t.id = doomed.id;
-- name: joined
WITH cur AS (SELECT * FROM tasks WHERE id = $1 FOR UPDATE),
     hit AS (SELECT f.at FROM cancel_fences f, cur WHERE cur.status = 'queued')
UPDATE tasks t SET status = 'cancelled' FROM hit, cur WHERE t.id = cur.id
  AND NOT EXISTS (SELECT 1 FROM tasks WHERE status = 'lost');
-- name: finish_task
UPDATE tasks SET status = $3 WHERE id = $1
  AND status = ANY(CASE WHEN $3 = 'cancelled' THEN ARRAY['cancelling']
                        ELSE ARRAY['running', 'cancelling'] END);
"""
    moves = read({"x.sql": sql}, STATES, DOMAINS).moves

    def by(query: str) -> set[tuple[str, str]]:
        return {(m.source, m.target) for m in moves if m.query == query}

    assert by("verdict") == {("running", "lost"), ("cancelling", "cancelled")}
    assert by("local") == {("queued", "cancelled"), ("running", "cancelled"),
                           ("running", "cancelling")}
    assert by("joined") == {("queued", "cancelled")}
    assert by("finish_task") == {("running", "succeeded"), ("running", "failed"),
                                 ("cancelling", "succeeded"), ("cancelling", "failed"),
                                 ("cancelling", "cancelled")}


@pytest.mark.parametrize(("sql", "why"), [
    ("UPDATE tasks SET status = $2 WHERE id = $1", "declare the values"),
    ("UPDATE tasks SET status = 'lost' WHERE coalesce(status, 'x') = 'queued'", "cannot evaluate"),
    ("UPDATE tasks SET status = lower($2) WHERE status = 'queued'", "cannot read the value"),
])
def test_the_reader_refuses_what_it_cannot_read(sql: str, why: str) -> None:
    with pytest.raises(SqlShapeError, match=why):
        read({"x.sql": f"-- name: odd\n{sql};\n"}, STATES, {})


def test_the_named_sets_are_the_ones_the_code_has_always_used() -> None:
    s = TaskStatus
    assert TERMINAL == {s.SUCCEEDED, s.FAILED, s.CANCELLED, s.LOST}
    assert ACTIVE == {s.QUEUED, s.RUNNING, s.CANCELLING, s.PAUSING, s.WAITING}
    # Paused: neither finished nor active; nothing but an operator moves it on.
    assert HELD == {s.PAUSED}
    assert RESUMABLE == {s.CANCELLED, s.LOST, s.FAILED, s.PAUSED}
    assert CANCELLABLE == ACTIVE | HELD
    assert CANCEL_PENDING == {s.CANCELLING}
    assert EXECUTING == {s.RUNNING, s.CANCELLING, s.PAUSING}
    assert PAUSABLE == {s.QUEUED, s.RUNNING}
    assert PAUSE_PENDING == {s.PAUSING}
    assert STOPPING == {s.CANCELLING, s.PAUSING}
    assert [t.terminal for t in s] == [t in TERMINAL for t in s]


def test_the_table_hangs_together() -> None:
    assert set(TRANSITIONS) == set(TaskStatus) and INITIAL in ACTIVE
    assert sorted(ATTENTION) == sorted(TaskStatus)
    assert all(events for moves in TRANSITIONS.values() for events in moves.values())
    # Only a resume leaves a terminal state, and it starts over at the initial state.
    for state in TERMINAL:
        assert set(TRANSITIONS[state]) <= {INITIAL}
    # Every state is reachable from the initial one, and every active state can end
    # without a resume (invariant 5: the DB converges).
    reach, todo = {INITIAL}, [INITIAL]
    while todo:
        for target in TRANSITIONS[todo.pop()]:
            if target not in reach:
                reach.add(target)
                todo.append(target)
    assert reach == set(TaskStatus)
    for state in ACTIVE:
        assert any(t in TERMINAL for t in TRANSITIONS[state]), state
    # A held state is left only by an operator, and a cancel ends it.
    for state in HELD:
        assert TaskStatus.CANCELLED in TRANSITIONS[state] and INITIAL in TRANSITIONS[state]


def test_pause_moves() -> None:
    s, e = TaskStatus, Event
    assert can_move(s.QUEUED, s.PAUSED, e.PAUSE) and can_move(s.RUNNING, s.PAUSING, e.PAUSE)
    # The execution records its stop, or the reaper settles it: paused either way.
    assert can_move(s.PAUSING, s.PAUSED, e.FINISH) and can_move(s.PAUSING, s.PAUSED, e.REAP)
    # A cancel wins over a pause; a resume gives a paused task a new message.
    assert can_move(s.PAUSING, s.CANCELLING, e.CANCEL)
    assert can_move(s.PAUSED, s.QUEUED, e.RESUME) and can_move(s.PAUSED, s.CANCELLED, e.CANCEL)
    # Nothing reaps a paused task, and nothing claims it.
    assert not can_move(s.PAUSED, s.LOST) and not can_move(s.PAUSED, s.RUNNING)
    # Preempted (a drain): back to queued as a new attempt, not a resume.
    assert can_move(s.RUNNING, s.QUEUED, e.REQUEUE)
    # A pause resumed while it stops: queued again once the execution stopped, never by the
    # resume itself (the execution still holds the task), so it is not RESUMABLE.
    assert can_move(s.PAUSING, s.QUEUED, e.REQUEUE) and not can_move(s.PAUSING, s.QUEUED, e.RESUME)
    assert s.PAUSING not in RESUMABLE


def test_can_move_follows_the_table() -> None:
    assert can_move("queued", "running") and can_move(TaskStatus.FAILED, TaskStatus.QUEUED)
    assert can_move("running", "queued", Event.REQUEUE)
    assert not can_move("running", "queued", Event.RESUME)
    assert not can_move("cancelling", "queued") and not can_move("succeeded", "queued")
    with pytest.raises(ValueError):
        can_move("sleeping", "queued")


def test_describe_is_the_table_as_json() -> None:
    doc = json.loads(json.dumps(describe()))

    assert doc["states"] == STATES and doc["initial"] == INITIAL.value
    for key, group in (("active", ACTIVE), ("terminal", TERMINAL), ("resumable", RESUMABLE),
                       ("cancellable", CANCELLABLE), ("cancel_pending", CANCEL_PENDING),
                       ("executing", EXECUTING), ("held", HELD), ("pausable", PAUSABLE),
                       ("pause_pending", PAUSE_PENDING)):
        assert doc[key] == [s for s in STATES if s in group], key
    assert doc["attention"] == [s.value for s in ATTENTION]
    assert {(m["from"], m["to"]) for m in doc["transitions"]} == table_moves()
    assert all(m["events"] for m in doc["transitions"])
