-- name: ping
SELECT 1;

-- name: insert_task
INSERT INTO tasks (id, actor, queue, kwargs, status, message_id, eta, fail_fast)
VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7)
RETURNING *;

-- name: delete_queued_task
DELETE FROM tasks WHERE id = $1 AND status = 'queued' AND attempt = 0;

-- name: get_task
SELECT * FROM tasks WHERE id = $1;

-- name: lock_task
-- The fence lock before the row's, as every writer takes them (see fence_lock).
SELECT * FROM tasks WHERE id = $1
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)
FOR UPDATE OF tasks;

-- name: list_results
SELECT chunk, attempt, ok, result, created_at FROM task_results
WHERE task_id = $1 ORDER BY chunk;

-- name: saved_chunks
SELECT chunk FROM task_results WHERE task_id = $1 AND ok;

-- name: upsert_actor
INSERT INTO actors (name, queue, params, options, updated_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (name) DO UPDATE
SET queue = excluded.queue, params = excluded.params, options = excluded.options, updated_at = now();

-- name: get_actor
SELECT * FROM actors WHERE name = $1;

-- name: list_actors
SELECT * FROM actors ORDER BY name;

-- name: claim_task
-- Invariant 2: the only way into `running`. A redelivered message can take over a
-- running row only once its lease (last heartbeat, or start) has expired. A task that a
-- cancel fence covers never starts: the claim ends it as cancelled instead.
-- It never waits: a row someone else holds answers `busy` (the delivery is retried), so a
-- claim holds its lock on cancel_fences (see fence_lock) only for as long as it runs. One
-- that runs past its deadline ($6 seconds after it arrived) takes nothing: its caller gave
-- up waiting.
-- The row is locked by id alone: a row held by a transaction that is about to give it
-- this very message (a resume) is busy, not stale.
-- A child whose nearest stopped ancestor is being cancelled or has ended (cancelled,
-- failed, lost) never starts either: it ends `cancelled`; under a paused or pausing
-- ancestor it is paused. A root costs nothing here (it has no parent to walk to).
WITH RECURSIVE locked AS (
    SELECT id, status, queued_at, actor, queue, heartbeat_at, started_at, message_id, parent_id
    FROM tasks WHERE id = $1
    FOR UPDATE SKIP LOCKED
), cur AS (
    SELECT * FROM locked WHERE message_id = $2
), fence AS (
    SELECT f.at, f.reason, f.by, f.forced FROM cancel_fences f, cur
    WHERE cur.status = 'queued' AND f.at > cur.queued_at
      AND (f.actor IS NULL OR f.actor = cur.actor) AND (f.queue IS NULL OR f.queue = cur.queue)
    ORDER BY f.at LIMIT 1
), up(id, hops) AS (
    SELECT parent_id, 1 FROM cur WHERE cur.status = 'queued' AND parent_id IS NOT NULL
    UNION ALL
    SELECT t.parent_id, up.hops + 1 FROM up JOIN tasks t ON t.id = up.id
    WHERE t.parent_id IS NOT NULL
), held AS (
    -- Each ancestor read by its id (the LIMIT keeps the planner from walking the rows in
    -- those states instead, which a cancel-all makes a million of before statistics know).
    SELECT t.status AS ancestor_status, t.cancel_by, t.cancel_forced, t.pause_by
    FROM up CROSS JOIN LATERAL (
        SELECT status, cancel_by, cancel_forced, pause_by FROM tasks WHERE id = up.id LIMIT 1
    ) AS t
    WHERE t.status IN ('cancelling', 'cancelled', 'failed', 'lost', 'pausing', 'paused')
    ORDER BY up.hops LIMIT 1
), tree_cancelled AS (
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(),
        outcome = CASE WHEN t.attempt > 0 THEN 'requeued' ELSE 'never_started' END,
        cancel_requested_at = now(), cancel_reason = 'parent_cancelled',
        cancel_by = coalesce(held.cancel_by, 'tree'), cancel_forced = coalesce(held.cancel_forced, false)
    FROM held, cur
    WHERE t.id = cur.id AND cur.status = 'queued' AND NOT EXISTS (SELECT 1 FROM fence)
      AND held.ancestor_status IN ('cancelling', 'cancelled', 'failed', 'lost')
    RETURNING t.id
), tree_paused AS (
    UPDATE tasks t
    SET status = 'paused', pause_requested_at = now(), pause_reason = 'parent_paused',
        pause_by = coalesce(held.pause_by, 'tree')
    FROM held, cur
    WHERE t.id = cur.id AND cur.status = 'queued' AND NOT EXISTS (SELECT 1 FROM fence)
      AND held.ancestor_status IN ('pausing', 'paused')
    RETURNING t.id
), fenced AS (
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(), outcome = 'never_started',
        cancel_requested_at = fence.at, cancel_reason = fence.reason, cancel_by = fence.by,
        cancel_forced = fence.forced
    FROM fence, cur WHERE t.id = cur.id
    RETURNING t.id
), claimed AS (
    UPDATE tasks t
    SET status = 'running', attempt = t.attempt + 1, started_at = clock_timestamp(),
        heartbeat_at = NULL, worker = $3, pid = $4, finished_at = NULL, outcome = NULL,
        error = NULL
    FROM cur
    WHERE t.id = cur.id AND NOT EXISTS (SELECT 1 FROM fence) AND NOT EXISTS (SELECT 1 FROM held)
      AND clock_timestamp() < statement_timestamp() + make_interval(secs => $6)
      AND (cur.status = 'queued'
           OR (cur.status = 'running'
               AND coalesce(cur.heartbeat_at, cur.started_at) < now() - make_interval(secs => $5)))
    RETURNING t.attempt, t.started_at, t.kwargs, t.actor, t.queue, t.parent_id, t.children,
              t.children_done_at IS NOT NULL AS children_done,
              -- The chunks earlier attempts saved, in the same round trip.
              ARRAY(SELECT r.chunk FROM task_results r WHERE r.task_id = t.id AND r.ok) AS saved
)
SELECT attempt, started_at, kwargs, actor, queue, parent_id, children, children_done, saved,
       false AS busy, false AS fenced FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false, true FROM fenced
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false, true FROM tree_cancelled
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false, true FROM tree_paused
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, true, false
WHERE NOT EXISTS (SELECT 1 FROM locked) AND EXISTS (SELECT 1 FROM tasks WHERE id = $1);

-- name: unclaim_task
-- A claim whose answer never reached its worker (it gave up waiting) but committed: the
-- task goes back to queued for the retried delivery of the same message.
UPDATE tasks
SET status = 'queued', started_at = NULL, worker = NULL, pid = NULL
WHERE id = $1 AND message_id = $2 AND status = 'running' AND worker = $3 AND pid = $4
  AND heartbeat_at IS NULL
RETURNING attempt;

-- name: heartbeat
-- Fenced by attempt: a stale execution gets no row back and learns it must stop.
UPDATE tasks
SET heartbeat_at = now(), done = $3, failed = $4, total = $5, current_chunk = $6, eta_seconds = $7,
    rss_bytes = coalesce($8, rss_bytes), cpu_percent = coalesce($9, cpu_percent)
WHERE id = $1 AND attempt = $2 AND status IN ('running', 'cancelling', 'pausing')
-- A pause stops the execution with its token's reason `pause` (its own reason is the audit's).
RETURNING status, CASE WHEN status = 'pausing' THEN 'pause' ELSE cancel_reason END AS cancel_reason,
          cancel_forced, cancel_deadline;

-- name: node_heartbeat
-- One worker's heartbeats in one statement: what each of its pool processes reported, fenced
-- by attempt as `heartbeat` is, dated when the process reported it ($3: seconds ago), and
-- the state of every execution the worker runs (those in $11 too, which report nothing now:
-- a process holding its GIL still has a cancel deadline). A row another transaction holds
-- is left to the next beat instead of waited for: the statement never waits on a row lock,
-- so it never joins a deadlock whatever order other writers lock rows in.
WITH beat AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::float8[], $4::int[], $5::int[], $6::int[],
                         $7::int[], $8::float8[], $9::bigint[], $10::real[])
        AS b(id, attempt, age, done, failed, total, current_chunk, eta_seconds, rss_bytes,
             cpu_percent)
), free AS (
    SELECT t.id FROM tasks t JOIN beat b ON b.id = t.id
    WHERE t.attempt = b.attempt AND t.status IN ('running', 'cancelling', 'pausing')
    ORDER BY t.id
    FOR UPDATE OF t SKIP LOCKED
), written AS (
    UPDATE tasks t
    SET heartbeat_at = greatest(t.heartbeat_at, now() - make_interval(secs => b.age)),
        done = b.done, failed = b.failed, total = b.total, current_chunk = b.current_chunk,
        eta_seconds = b.eta_seconds, rss_bytes = coalesce(b.rss_bytes, t.rss_bytes),
        cpu_percent = coalesce(b.cpu_percent, t.cpu_percent)
    FROM beat b JOIN free f ON f.id = b.id
    WHERE t.id = b.id
    RETURNING t.id
), watched AS (
    SELECT id FROM beat UNION SELECT unnest($11::uuid[])
)
SELECT t.id, t.attempt, t.message_id, t.status,
       CASE WHEN t.status = 'pausing' THEN 'pause' ELSE t.cancel_reason END AS cancel_reason,
       t.cancel_forced, t.cancel_deadline,
       extract(epoch FROM t.cancel_deadline - now())::float8 AS due_in,
       w.id IS NOT NULL AS written
FROM watched x JOIN tasks t ON t.id = x.id LEFT JOIN written w ON w.id = t.id;

-- name: execution_state
SELECT status, attempt, cancel_reason, cancel_forced, cancel_deadline FROM tasks WHERE id = $1;

-- name: save_result
-- A chunk result is written only by the live attempt; a failed chunk may be redone later.
INSERT INTO task_results (task_id, chunk, attempt, ok, result)
SELECT t.id, $3, $2, $4, $5 FROM tasks t
WHERE t.id = $1 AND t.attempt = $2 AND t.status IN ('running', 'cancelling', 'pausing')
ON CONFLICT (task_id, chunk) DO UPDATE
SET attempt = excluded.attempt, ok = excluded.ok, result = excluded.result, created_at = now()
WHERE NOT task_results.ok
RETURNING chunk;

-- name: finish_task
-- A parent whose own code succeeded (and whose `on_children_done` step has not run) waits
-- for its children: `waiting`, not finished; one whose cancel came too late for its code
-- still ends `cancelled` with its subtree.
UPDATE tasks
SET status = CASE WHEN $3 = 'succeeded' AND children > 0 AND children_done_at IS NULL
                       AND status = 'cancelling' THEN 'cancelled'
                  WHEN $3 = 'succeeded' AND children > 0 AND children_done_at IS NULL
                       AND status <> 'cancelling' THEN 'waiting'
                  ELSE $3 END,
    outcome = CASE WHEN $3 = 'succeeded' AND children > 0 AND children_done_at IS NULL
                        AND status = 'cancelling' THEN 'cooperative' ELSE $4 END,
    error = $5,
    finished_at = CASE WHEN $3 = 'succeeded' AND children > 0 AND children_done_at IS NULL
                            AND status <> 'cancelling' THEN NULL ELSE now() END,
    done = coalesce($6, done), failed = coalesce($7, failed), total = coalesce($8, total),
    heartbeat_at = now()
-- Only a cancel the DB recorded can end as `cancelled`; an execution ends in nothing else
-- (a paused one ends through finish_pause).
WHERE id = $1 AND attempt = $2 AND $3 IN ('succeeded', 'failed', 'cancelled')
  AND status = ANY(CASE WHEN $3 = 'cancelled' THEN ARRAY['cancelling']
                        ELSE ARRAY['running', 'cancelling', 'pausing'] END)
RETURNING status, parent_id;

-- name: request_time_limit
UPDATE tasks
SET status = 'cancelling', cancel_requested_at = now(), cancel_reason = 'time_limit',
    cancel_by = 'time_limit', cancel_forced = false,
    cancel_deadline = now() + make_interval(secs => $3)
WHERE id = $1 AND attempt = $2 AND status = 'running'
RETURNING cancel_deadline;

-- name: cancel_one
-- The whole first rung for one task in one statement (one round trip in autocommit): lock
-- the row, move it on by its state, audit what changed. `was` is the state found; `changed`
-- says whether this call did anything; the other columns are the row as it is now. A cancel
-- wins over a pause under way; a paused task holds no process and ends at once.
WITH cur AS (
    SELECT * FROM tasks WHERE id = $1 FOR UPDATE
), paused AS (
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(),
        outcome = coalesce(t.outcome, CASE WHEN t.attempt > 0 THEN 'requeued'
                                           ELSE 'never_started' END),
        cancel_requested_at = now(), cancel_reason = $2, cancel_by = $3, cancel_forced = $4
    FROM cur WHERE t.id = cur.id AND cur.status = 'paused'
    RETURNING t.*
), waiting AS (
    -- Its own code is done and it holds no process: cancelled at once (its subtree next).
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(), outcome = 'cooperative',
        cancel_requested_at = now(), cancel_reason = $2, cancel_by = $3, cancel_forced = $4
    FROM cur WHERE t.id = cur.id AND cur.status = 'waiting'
    RETURNING t.*
), queued AS (
    -- One that ran before (preempted, retried, resumed) waits for a next attempt: `requeued`.
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(),
        outcome = CASE WHEN t.attempt > 0 THEN 'requeued' ELSE 'never_started' END,
        cancel_requested_at = now(), cancel_reason = $2, cancel_by = $3, cancel_forced = $4
    FROM cur WHERE t.id = cur.id AND cur.status = 'queued'
    RETURNING t.*
), running AS (
    UPDATE tasks t
    SET status = 'cancelling', cancel_requested_at = now(), cancel_reason = $2,
        cancel_by = $3, cancel_forced = $4, cancel_deadline = now() + make_interval(secs => $5)
    FROM cur WHERE t.id = cur.id AND cur.status IN ('running', 'pausing')
    RETURNING t.*
), hastened AS (
    UPDATE tasks t SET cancel_forced = true, cancel_deadline = least(t.cancel_deadline, now())
    FROM cur
    WHERE t.id = cur.id AND cur.status = 'cancelling' AND $4 AND NOT coalesce(cur.cancel_forced, false)
    RETURNING t.*
), changed AS (
    SELECT * FROM queued UNION ALL SELECT * FROM running UNION ALL SELECT * FROM hastened
    UNION ALL SELECT * FROM paused UNION ALL SELECT * FROM waiting
), audit AS (
    INSERT INTO cancel_audit (by, reason, scope, forced, cancelled, cancelling, task_ids)
    SELECT $3, $2, jsonb_build_object('task_id', $1::text), $4,
           (cur.status IN ('queued', 'paused', 'waiting'))::int,
           (cur.status NOT IN ('queued', 'paused', 'waiting'))::int,
           ARRAY[$1::uuid]
    FROM cur WHERE EXISTS (SELECT 1 FROM changed)
    RETURNING id
)
SELECT (SELECT status FROM cur) AS was, EXISTS (SELECT 1 FROM changed) AS changed,
       (SELECT children > 0 FROM cur) AS has_children, now_row.*
FROM (SELECT * FROM changed
      UNION ALL SELECT * FROM cur WHERE NOT EXISTS (SELECT 1 FROM changed)) AS now_row;

-- name: fence_lock
-- cancel-all's first statement. Every writer that moves a task into `queued` or `running`
-- reads cancel_fences in its first statement, so it either committed before this lock
-- (and the statements below see it) or waits until the fence is committed (and the fence
-- covers it). Taken first by everyone, it never closes a cycle with row locks.
LOCK TABLE cancel_fences IN ACCESS EXCLUSIVE MODE;

-- name: cancel_all_fence
-- The queued side of cancel-all in O(1): one row that covers every task which entered
-- `queued` before it, in scope, and so every paused one too (a resume queues it anew).
-- `covered` comes from the tallies, not from a scan.
WITH scope_tally AS (
    SELECT queue, sum(n) AS n FROM (
        SELECT queue, n FROM task_tallies
        WHERE status IN ('queued', 'paused') AND ($1::text IS NULL OR actor = $1)
          AND ($2::text IS NULL OR queue = $2)
        UNION ALL
        SELECT queue, delta FROM task_tally_deltas
        WHERE status IN ('queued', 'paused') AND ($1::text IS NULL OR actor = $1)
          AND ($2::text IS NULL OR queue = $2)) x
    GROUP BY queue
)
INSERT INTO cancel_fences (at, actor, queue, reason, by, forced, queues, covered)
SELECT clock_timestamp(), $1, $2, $3, $4, $5,
       coalesce((SELECT array_agg(queue ORDER BY queue) FROM scope_tally WHERE n > 0), '{}'),
       coalesce((SELECT sum(n) FROM scope_tally), 0)
RETURNING id, at, extract(epoch FROM at)::float8 AS at_epoch, actor, queue, reason, by, forced,
          covered;

-- name: cancel_all_running
UPDATE tasks
SET status = 'cancelling', cancel_requested_at = now(), cancel_reason = $3, cancel_by = $4,
    cancel_forced = $5, cancel_deadline = now() + make_interval(secs => $6)
WHERE status IN ('running', 'pausing') AND ($1::text IS NULL OR actor = $1)
  AND ($2::text IS NULL OR queue = $2)
RETURNING id, message_id, worker;

-- name: cancel_all_hasten
-- A forced cancel-all pulls in the deadlines of tasks already cancelling.
UPDATE tasks SET cancel_forced = true, cancel_deadline = least(cancel_deadline, now())
WHERE status = 'cancelling' AND ($1::text IS NULL OR actor = $1)
  AND ($2::text IS NULL OR queue = $2)
RETURNING id, message_id, worker;

-- name: fence_audit
UPDATE cancel_fences SET audit_id = $2 WHERE id = $1;

-- name: open_fences
SELECT id, at, extract(epoch FROM at)::float8 AS at_epoch, actor, queue, reason, by, forced,
       queues, covered, swept, swept_at, purged_at,
       extract(epoch FROM clock_timestamp() - at)::float8 AS age
FROM cancel_fences WHERE swept_at IS NULL OR purged_at IS NULL ORDER BY id;

-- name: sweep_fence
-- One short batch of the queued rows a fence covers, to `cancelled`: the first $7 of them in
-- (queued_at, id) order after ($8, $9) and before ($10, $11), so that a walk goes on where
-- its last batch ended and never reads again what it has written (tasks_queued_walk_idx).
-- SKIP LOCKED: the sweep never waits for a row someone else holds (a later pass takes it, or
-- its claim sees the fence itself). The fence comes as parameters: the sweep holds no lock on
-- cancel_fences, so a new cancel-all never waits for it. Rows are written where they were
-- locked (ctid), without a second walk down the primary key. Answers how many rows it wrote,
-- how many it took (fewer than $7: nothing is left in the range but rows someone holds),
-- and the last one it took.
WITH batch AS MATERIALIZED (
    SELECT ctid, queued_at, id FROM tasks
    WHERE status = 'queued' AND queued_at < $1
      AND (queued_at, id) > ($8, $9) AND (queued_at, id) < ($10, $11)
      AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR queue = $3)
    ORDER BY queued_at, id LIMIT $7
    FOR UPDATE SKIP LOCKED
), swept AS (
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(), outcome = 'never_started',
        cancel_requested_at = $1, cancel_reason = $4, cancel_by = $5, cancel_forced = $6
    FROM batch WHERE t.ctid = batch.ctid AND t.status = 'queued'
    RETURNING 1
)
SELECT (SELECT count(*) FROM swept) AS swept, (SELECT count(*) FROM batch) AS taken,
       edge.queued_at AS edge_at, edge.id AS edge_id
FROM (SELECT) AS one
LEFT JOIN (SELECT queued_at, id FROM batch ORDER BY queued_at DESC, id DESC LIMIT 1) AS edge
    ON true;

-- name: sweep_fence_down
-- sweep_fence from the other end of the range, newest first: a second lane that meets the
-- first one somewhere in the middle (SKIP LOCKED keeps their batches apart). Its edge is
-- the oldest row it took.
WITH batch AS MATERIALIZED (
    SELECT ctid, queued_at, id FROM tasks
    WHERE status = 'queued' AND queued_at < $1
      AND (queued_at, id) > ($8, $9) AND (queued_at, id) < ($10, $11)
      AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR queue = $3)
    ORDER BY queued_at DESC, id DESC LIMIT $7
    FOR UPDATE SKIP LOCKED
), swept AS (
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(), outcome = 'never_started',
        cancel_requested_at = $1, cancel_reason = $4, cancel_by = $5, cancel_forced = $6
    FROM batch WHERE t.ctid = batch.ctid AND t.status = 'queued'
    RETURNING 1
)
SELECT (SELECT count(*) FROM swept) AS swept, (SELECT count(*) FROM batch) AS taken,
       edge.queued_at AS edge_at, edge.id AS edge_id
FROM (SELECT) AS one
LEFT JOIN (SELECT queued_at, id FROM batch ORDER BY queued_at, id LIMIT 1) AS edge ON true;

-- name: sweep_fence_paused
-- The same for the paused tasks a fence covers, once its queued ones are done: they hold no
-- process and no message, and keep how their last execution stopped, if one ran.
WITH batch AS MATERIALIZED (
    SELECT ctid, queued_at, id FROM tasks
    WHERE status = 'paused' AND queued_at < $1
      AND (queued_at, id) > ($8, $9) AND (queued_at, id) < ($10, $11)
      AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR queue = $3)
    ORDER BY queued_at, id LIMIT $7
    FOR UPDATE SKIP LOCKED
), swept AS (
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(), outcome = coalesce(t.outcome, 'never_started'),
        cancel_requested_at = $1, cancel_reason = $4, cancel_by = $5, cancel_forced = $6
    FROM batch WHERE t.ctid = batch.ctid AND t.status = 'paused'
    RETURNING 1
)
SELECT (SELECT count(*) FROM swept) AS swept, (SELECT count(*) FROM batch) AS taken,
       edge.queued_at AS edge_at, edge.id AS edge_id
FROM (SELECT) AS one
LEFT JOIN (SELECT queued_at, id FROM batch ORDER BY queued_at DESC, id DESC LIMIT 1) AS edge
    ON true;

-- name: fence_leftovers
-- Whether a row the fence covers is still queued or paused. Read only: a look over a range
-- the sweep has written skips its old index entries without holding a lock on `tasks`.
SELECT EXISTS (SELECT 1 FROM tasks
               WHERE status = 'queued' AND queued_at < $1
                 AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR queue = $3))
    OR EXISTS (SELECT 1 FROM tasks
               WHERE status = 'paused' AND queued_at < $1
                 AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR queue = $3));

-- name: fence_progress
UPDATE cancel_fences SET swept = swept + $2 WHERE id = $1;

-- name: fence_swept
UPDATE cancel_fences SET swept_at = now() WHERE id = $1;

-- name: fence_purged
UPDATE cancel_fences SET purged_at = now() WHERE id = $1;

-- name: insert_audit
INSERT INTO cancel_audit (by, reason, scope, forced, cancelled, cancelling, task_ids)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id, at;

-- name: list_audit
SELECT * FROM cancel_audit ORDER BY id DESC LIMIT $1;

-- name: resume_task
-- Reads cancel_fences first (see fence_lock): a resume never slips between a cancel-all's
-- statements, and one that commits after a fence is not covered by it. A paused task keeps
-- its schedule (one paused before its ETA still waits for it), and a pause is no failure: it
-- spends nothing of the actor's automatic-resume budget.
UPDATE tasks
SET status = 'queued', message_id = $2, enqueued_at = now(), finished_at = NULL,
    queued_at = clock_timestamp(),
    cancel_requested_at = NULL, cancel_reason = NULL, cancel_by = NULL, cancel_forced = NULL,
    cancel_deadline = NULL, outcome = NULL, error = NULL, heartbeat_at = NULL,
    eta = CASE WHEN status = 'paused' THEN eta END,
    resumes = resumes + CASE WHEN status = 'paused' THEN 0 ELSE 1 END,
    pause_requested_at = NULL, pause_reason = NULL, pause_by = NULL
WHERE id = $1 AND status = ANY($3::text[])
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)  -- takes the fence lock first
  -- A paused task a cancel-all covers is the fence's: the sweep cancels it.
  AND NOT (status = 'paused' AND EXISTS (
      SELECT 1 FROM cancel_fences f
      WHERE f.at > tasks.queued_at AND (f.actor IS NULL OR f.actor = tasks.actor)
        AND (f.queue IS NULL OR f.queue = tasks.queue)))
RETURNING *;

-- name: stale_executions
-- Executing rows whose heartbeat (or, without one, whose start) is too old.
SELECT id, actor, queue, status, attempt, message_id, worker, pid, heartbeat_at, started_at,
       cancel_reason, resumes
FROM tasks
WHERE status IN ('running', 'cancelling', 'pausing')
  AND coalesce(heartbeat_at, started_at) < now() - make_interval(secs => $1);

-- name: due_cancellations
-- Cancels and pauses whose execution outlived its deadline: the kill step is due.
SELECT id, actor, status, attempt, worker, pid, message_id, cancel_deadline, cancel_forced,
       extract(epoch FROM now() - coalesce(heartbeat_at, started_at))::float8 AS silent_for
FROM tasks
WHERE status IN ('cancelling', 'pausing')
  AND cancel_deadline <= now() - make_interval(secs => $1);

-- name: mark_dead
-- The reaper's verdict on an execution that is gone: lost, or what the stop it was asked for
-- ends in (a pause keeps its checkpoint and waits for a resume).
-- A pausing row resumed meanwhile is queued again under a fresh message (see finish_pause);
-- the caller publishes it. Reads cancel_fences first (see fence_lock), like every move into
-- `queued`.
UPDATE tasks
SET status = CASE WHEN status = 'cancelling' THEN 'cancelled'
                  WHEN status = 'pausing' AND resume_requested_at IS NOT NULL THEN 'queued'
                  WHEN status = 'pausing' THEN 'paused' ELSE 'lost' END,
    outcome = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL THEN NULL
                   ELSE $3 END,
    finished_at = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL THEN NULL
                       ELSE now() END,
    message_id = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL
                      THEN gen_random_uuid() ELSE message_id END,
    enqueued_at = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL
                       THEN now() ELSE enqueued_at END,
    queued_at = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL
                     THEN clock_timestamp() ELSE queued_at END,
    heartbeat_at = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL
                        THEN NULL ELSE heartbeat_at END,
    pause_requested_at = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL
                              THEN NULL ELSE pause_requested_at END,
    pause_reason = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL
                        THEN NULL ELSE pause_reason END,
    pause_by = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL
                    THEN NULL ELSE pause_by END,
    cancel_deadline = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL
                           THEN NULL ELSE cancel_deadline END,
    resume_requested_at = NULL
WHERE id = $1 AND attempt = $2 AND status IN ('running', 'cancelling', 'pausing')
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)  -- takes the fence lock first
RETURNING status;

-- name: requeue_execution
-- A new attempt of a running execution that failed or died (retries, automatic resume).
-- Never for one being cancelled: that would bring cancelled work back. Reads
-- cancel_fences first (see fence_lock), so it cannot slip between cancel-all's statements.
UPDATE tasks
SET status = 'queued', message_id = $3, enqueued_at = now(), heartbeat_at = NULL,
    queued_at = clock_timestamp(),
    eta = $4, error = $5, resumes = resumes + 1
WHERE id = $1 AND attempt = $2 AND status = 'running'
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)  -- takes the fence lock first
RETURNING *;

-- name: active_by_ids
SELECT id, status, attempt, message_id, finished_at,
       extract(epoch FROM now() - finished_at)::float8 AS finished_ago
FROM tasks WHERE id = ANY($1::uuid[]);

-- name: stranded_queued
-- One page of the rows queued for long, oldest first after the cursor ($2, $3); rows a
-- cancel fence covers are the sweep's, not lost.
SELECT t.id, t.actor, t.queue, t.message_id, t.requeues, t.enqueued_at,
       extract(epoch FROM t.queued_at)::float8 AS queued_epoch
FROM tasks t
WHERE t.status = 'queued'
  AND t.enqueued_at < now() - make_interval(secs => $1)
  AND ($2::timestamptz IS NULL OR (t.enqueued_at, t.id) > ($2, $3::uuid))
  AND (t.eta IS NULL OR t.eta < now() - make_interval(secs => $1))
  AND NOT EXISTS (SELECT 1 FROM cancel_fences f
                  WHERE f.at > t.queued_at AND (f.actor IS NULL OR f.actor = t.actor)
                    AND (f.queue IS NULL OR f.queue = t.queue))
ORDER BY t.enqueued_at, t.id
LIMIT $4;

-- name: requeue_message
UPDATE tasks SET message_id = $3, enqueued_at = now(), requeues = requeues + 1
WHERE id = $1 AND message_id = $2 AND status = 'queued'
RETURNING *;

-- name: mark_queued_lost
UPDATE tasks SET status = 'lost', outcome = 'gone', finished_at = now()
WHERE id = $1 AND message_id = $2 AND status = 'queued'
RETURNING status;

-- name: active_counts
-- From the tallies: constant cost whatever the backlog.
SELECT status, sum(n)::bigint AS n FROM (
    SELECT status, n FROM task_tallies
    WHERE status IN ('queued', 'running', 'cancelling', 'pausing', 'waiting')
    UNION ALL
    SELECT status, delta FROM task_tally_deltas
    WHERE status IN ('queued', 'running', 'cancelling', 'pausing', 'waiting')) x
GROUP BY status;

-- name: all_counts
-- Tallies plus the deltas not yet folded in (see migration 004): no scan of the history.
SELECT status, sum(n)::bigint AS n FROM (
    SELECT status, n FROM task_tallies
    UNION ALL SELECT status, delta FROM task_tally_deltas) x
GROUP BY status;

-- name: fold_tallies
-- The reaper folds the appended deltas into the tallies; it is their only writer.
WITH d AS (
    DELETE FROM task_tally_deltas WHERE id <= (SELECT max(id) FROM task_tally_deltas)
    RETURNING status, actor, queue, delta
), s AS (
    SELECT status, actor, queue, sum(delta) AS delta FROM d GROUP BY status, actor, queue
)
INSERT INTO task_tallies AS t (status, actor, queue, n)
SELECT status, actor, queue, delta FROM s
ON CONFLICT (status, actor, queue) DO UPDATE SET n = t.n + excluded.n;

-- name: prune_audit
DELETE FROM cancel_audit WHERE id IN (
    SELECT id FROM cancel_audit WHERE at < now() - make_interval(days => $1) ORDER BY id LIMIT $2);

-- name: prune_fences
-- A fence is kept while a task it covers could still be queued somewhere.
DELETE FROM cancel_fences
WHERE swept_at < now() - make_interval(days => $1) AND purged_at IS NOT NULL;

-- name: active_rows
SELECT id, actor, status, attempt, worker, pid, done, failed, total, current_chunk,
       eta_seconds, heartbeat_at, started_at, created_at, rss_bytes, cpu_percent
FROM tasks WHERE status IN ('running', 'cancelling', 'pausing') ORDER BY started_at;

-- name: active_queues
-- Queues that still hold work in the DB's view (from the tallies, not the rows).
SELECT queue FROM (
    SELECT queue, n FROM task_tallies
    WHERE status IN ('queued', 'running', 'cancelling', 'pausing', 'waiting')
    UNION ALL
    SELECT queue, delta FROM task_tally_deltas
    WHERE status IN ('queued', 'running', 'cancelling', 'pausing', 'waiting')) x
GROUP BY queue HAVING sum(n) > 0 ORDER BY queue;

-- name: force_kill_all
-- taskctl force-kill: every non-terminal row ends now, in one statement, except executions
-- on other hosts' live workers ($3): the operator kills only this host's processes, so
-- those are cancelled with force (deadline now) and their own host records how they ended.
-- Rows that ran here (or whose worker is gone) were killed; queued ones never started.
-- Runs after fence_lock.
WITH doomed AS (
    SELECT id, status,
           worker = ANY($3::text[]) AND status IN ('running', 'cancelling', 'pausing') AS remote
    FROM tasks
    WHERE status IN ('queued', 'running', 'cancelling', 'pausing', 'waiting')
    FOR UPDATE
)
UPDATE tasks t
SET status = CASE WHEN doomed.remote THEN 'cancelling' ELSE 'cancelled' END,
    finished_at = CASE WHEN doomed.remote THEN NULL ELSE now() END,
    outcome = CASE WHEN doomed.remote THEN NULL
                   WHEN doomed.status = 'queued' THEN 'never_started'
                   WHEN doomed.status = 'waiting' THEN 'cooperative' ELSE 'killed' END,
    cancel_requested_at = coalesce(t.cancel_requested_at, now()),
    cancel_reason = $1, cancel_by = $2, cancel_forced = true,
    cancel_deadline = least(coalesce(t.cancel_deadline, now()), now())
FROM doomed
WHERE t.id = doomed.id AND t.status IN ('queued', 'running', 'cancelling', 'pausing', 'waiting')
RETURNING t.id, t.message_id, doomed.status AS was, doomed.remote AS remote;

-- name: clock_epoch
-- The server's clock, not the transaction's start: a cancel event's `before` must be later
-- than every claim that committed ahead of it.
SELECT extract(epoch FROM clock_timestamp())::float8;

-- name: prune_history
-- Results go with their task (ON DELETE CASCADE). Bounded per call.
WITH old AS (
    SELECT id FROM tasks
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'lost')
      AND finished_at < now() - make_interval(days => $1)
    ORDER BY finished_at LIMIT $2
)
DELETE FROM tasks t USING old WHERE t.id = old.id;

-- name: request_memory_limit
-- The resource guard's cancel: the pool process outgrew the actor's memory limit.
UPDATE tasks
SET status = 'cancelling', cancel_requested_at = now(), cancel_reason = 'memory_limit',
    cancel_by = 'memory_limit', cancel_forced = false,
    cancel_deadline = now() + make_interval(secs => $3)
WHERE id = $1 AND attempt = $2 AND status = 'running'
RETURNING cancel_deadline;

-- name: executions_of_processes
-- The executions that pool processes of one worker were running when they died: the worker's
-- main process settles them at once instead of waiting for the heartbeat timeout.
SELECT id, actor, queue, status, attempt, message_id, worker, pid, heartbeat_at, started_at,
       cancel_reason, resumes
FROM tasks
WHERE status IN ('running', 'cancelling', 'pausing') AND worker = $1 AND pid = ANY($2::int[]);

-- name: active_by_message_ids
-- The unfinished rows whose current Celery message is one of these: what a revoke in Celery's
-- own control names. An older message of a task (before a resume) names nothing.
SELECT id, status, attempt, message_id, worker FROM tasks
WHERE message_id = ANY($1::uuid[])
  AND status IN ('queued', 'running', 'cancelling', 'pausing', 'paused', 'waiting');

-- name: pause_one
-- A pause of one task in one statement, like cancel_one: a queued task is paused at once
-- (its message is dropped when a worker takes it); a running one goes to `pausing` with a
-- deadline. A queued task a cancel fence covers is the fence's (`fenced`): it never runs, so
-- it is not paused. `was` is the state found; `changed` whether this call did anything.
WITH cur AS (
    SELECT * FROM tasks WHERE id = $1 FOR UPDATE
), covered AS (
    SELECT 1 FROM cancel_fences f, cur
    WHERE cur.status = 'queued' AND f.at > cur.queued_at
      AND (f.actor IS NULL OR f.actor = cur.actor) AND (f.queue IS NULL OR f.queue = cur.queue)
    LIMIT 1
), queued AS (
    UPDATE tasks t
    SET status = 'paused', pause_requested_at = now(), pause_reason = $2, pause_by = $3
    FROM cur WHERE t.id = cur.id AND cur.status = 'queued' AND NOT EXISTS (SELECT 1 FROM covered)
    RETURNING t.*
), running AS (
    UPDATE tasks t
    SET status = 'pausing', pause_requested_at = now(), pause_reason = $2, pause_by = $3,
        resume_requested_at = NULL,
        cancel_deadline = now() + make_interval(secs => $4)
    FROM cur WHERE t.id = cur.id AND cur.status = 'running'
    RETURNING t.*
), changed AS (
    SELECT * FROM queued UNION ALL SELECT * FROM running
), audit AS (
    INSERT INTO cancel_audit (by, reason, scope, forced, cancelled, cancelling, task_ids)
    SELECT $3, $2, jsonb_build_object('action', 'pause', 'task_id', $1::text,
                                      'paused', (cur.status = 'queued')::int,
                                      'pausing', (cur.status = 'running')::int),
           false, 0, 0, ARRAY[$1::uuid]
    FROM cur WHERE EXISTS (SELECT 1 FROM changed)
    RETURNING id
)
SELECT (SELECT status FROM cur) AS was, EXISTS (SELECT 1 FROM changed) AS changed,
       EXISTS (SELECT 1 FROM covered) AS fenced, (SELECT children > 0 FROM cur) AS has_children,
       now_row.*
FROM (SELECT * FROM changed
      UNION ALL SELECT * FROM cur WHERE NOT EXISTS (SELECT 1 FROM changed)) AS now_row;

-- name: clock_now
SELECT clock_timestamp();

-- name: pause_all_queued
-- One batch of pause-all's queued side, oldest first: tasks in scope that were queued before
-- the pause-all began ($3), but for those a cancel fence covers (they never run). Runs after
-- fence_lock, so no claim slips in between; a row someone holds is waited for.
WITH batch AS (
    SELECT t.id FROM tasks t
    WHERE t.status = 'queued' AND t.queued_at < $3
      AND ($1::text IS NULL OR t.actor = $1) AND ($2::text IS NULL OR t.queue = $2)
      AND NOT EXISTS (SELECT 1 FROM cancel_fences f
                      WHERE f.at > t.queued_at AND (f.actor IS NULL OR f.actor = t.actor)
                        AND (f.queue IS NULL OR f.queue = t.queue))
    ORDER BY t.queued_at LIMIT $6
    FOR UPDATE OF t
)
UPDATE tasks t
SET status = 'paused', pause_requested_at = now(), pause_reason = $4, pause_by = $5
FROM batch WHERE t.id = batch.id AND t.status = 'queued'
RETURNING t.id, t.message_id;

-- name: pause_all_running
-- pause-all's running side: every execution in scope of a task queued before the pause-all
-- began ($3) goes to `pausing`, due in $6 seconds. Runs after fence_lock.
UPDATE tasks
SET status = 'pausing', pause_requested_at = now(), pause_reason = $4, pause_by = $5,
    resume_requested_at = NULL,
    cancel_deadline = now() + make_interval(secs => $6)
WHERE status = 'running' AND queued_at < $3
  AND ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR queue = $2)
RETURNING id, message_id, worker;

-- name: resume_paused
-- One batch of resume-all: paused tasks in scope queued again, oldest first, each under a
-- fresh message id. As for one task's resume (resume_task), the schedule stays and the
-- automatic-resume budget is not spent. Reads cancel_fences first (see fence_lock), like
-- every move into `queued`.
WITH batch AS (
    SELECT t.id FROM tasks t
    WHERE t.status = 'paused' AND ($1::text IS NULL OR t.actor = $1)
      AND ($2::text IS NULL OR t.queue = $2)
      -- A paused task a cancel-all covers is the fence's: the sweep cancels it.
      AND NOT EXISTS (SELECT 1 FROM cancel_fences f
                      WHERE f.at > t.queued_at AND (f.actor IS NULL OR f.actor = t.actor)
                        AND (f.queue IS NULL OR f.queue = t.queue))
    ORDER BY t.queued_at, t.id LIMIT $3
    FOR UPDATE OF t
)
UPDATE tasks t
SET status = 'queued', message_id = gen_random_uuid(), enqueued_at = now(),
    queued_at = clock_timestamp(), finished_at = NULL, outcome = NULL, error = NULL,
    heartbeat_at = NULL, cancel_deadline = NULL, pause_requested_at = NULL,
    pause_reason = NULL, pause_by = NULL
FROM batch
WHERE t.id = batch.id AND t.status = 'paused'
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)  -- takes the fence lock first
RETURNING t.*;

-- name: finish_pause
-- The execution stopped for a pause and its checkpoint is flushed: `paused`, fenced by
-- attempt, only from `pausing` (a cancel that came meanwhile wins). One resumed while it was
-- stopping is queued again instead, under a fresh message (as resume_paused does) that the
-- caller publishes. Reads cancel_fences first (see fence_lock), like every move into `queued`.
UPDATE tasks
SET status = CASE WHEN resume_requested_at IS NULL THEN 'paused' ELSE 'queued' END,
    outcome = CASE WHEN resume_requested_at IS NULL THEN $3 END,
    finished_at = CASE WHEN resume_requested_at IS NULL THEN now() END,
    heartbeat_at = CASE WHEN resume_requested_at IS NULL THEN now() END,
    message_id = CASE WHEN resume_requested_at IS NULL THEN message_id
                      ELSE gen_random_uuid() END,
    enqueued_at = CASE WHEN resume_requested_at IS NULL THEN enqueued_at ELSE now() END,
    queued_at = CASE WHEN resume_requested_at IS NULL THEN queued_at
                     ELSE clock_timestamp() END,
    cancel_deadline = CASE WHEN resume_requested_at IS NULL THEN cancel_deadline END,
    pause_requested_at = CASE WHEN resume_requested_at IS NULL THEN pause_requested_at END,
    pause_reason = CASE WHEN resume_requested_at IS NULL THEN pause_reason END,
    pause_by = CASE WHEN resume_requested_at IS NULL THEN pause_by END,
    resume_requested_at = NULL,
    done = coalesce($4, done), failed = coalesce($5, failed), total = coalesce($6, total)
WHERE id = $1 AND attempt = $2 AND status = 'pausing'
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)  -- takes the fence lock first
RETURNING status;

-- name: record_kill
-- The worker killed an execution that outlived the grace of the stop it was asked for: it
-- ends as that stop says (a pause keeps its checkpoint and waits for a resume). A pausing
-- row resumed meanwhile is queued again under a fresh message (see finish_pause), that the
-- caller publishes (or, failing that, the reaper's lost-message rule).
UPDATE tasks
SET status = CASE WHEN status = 'pausing' AND resume_requested_at IS NOT NULL THEN 'queued'
                  WHEN status = 'pausing' THEN 'paused' ELSE 'cancelled' END,
    outcome = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                   THEN 'killed' END,
    finished_at = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                       THEN now() END,
    heartbeat_at = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                        THEN now() END,
    message_id = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                      THEN message_id
                      ELSE gen_random_uuid() END,
    enqueued_at = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                       THEN enqueued_at ELSE now() END,
    queued_at = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                     THEN queued_at
                     ELSE clock_timestamp() END,
    cancel_deadline = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                           THEN cancel_deadline END,
    pause_requested_at = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                              THEN pause_requested_at END,
    pause_reason = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                        THEN pause_reason END,
    pause_by = CASE WHEN NOT (status = 'pausing' AND resume_requested_at IS NOT NULL)
                    THEN pause_by END,
    resume_requested_at = NULL,
    done = coalesce($3, done), failed = coalesce($4, failed)
WHERE id = $1 AND attempt = $2 AND status IN ('cancelling', 'pausing')
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)  -- takes the fence lock first
RETURNING status;

-- name: resume_pausing
-- A resume of a task still stopping for a pause: recorded on the row, it takes effect when
-- the execution has stopped (finish_pause, record_kill, mark_dead queue it again). Scoped
-- like resume-all ($1 a task id, or every pausing row of the actor $2 and queue $3).
UPDATE tasks
SET resume_requested_at = coalesce(resume_requested_at, now())
WHERE status = 'pausing' AND ($1::uuid IS NULL OR id = $1)
  AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR queue = $3)
RETURNING *;

-- name: preempt_execution
-- A running execution handed back to the queue (its worker drains, or the resource guard
-- moved it): a new attempt under a fresh message goes on from the checkpoint elsewhere. Only
-- from `running`: a cancel or a pause asked for meanwhile wins. Not a resume: the actor's
-- automatic-resume budget is left alone. Reads cancel_fences first (see fence_lock).
UPDATE tasks
SET status = 'queued', message_id = $3, enqueued_at = now(), queued_at = clock_timestamp(),
    heartbeat_at = NULL
WHERE id = $1 AND attempt = $2 AND status = 'running'
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)  -- takes the fence lock first
RETURNING *;

-- name: list_task_summaries
-- The list view: every column but kwargs (the detail has them) and the start of the error,
-- so a page costs the same whatever the tasks carry. Keyset pagination as list_tasks.
SELECT id, actor, queue, status, attempt, eta, done, failed, total, current_chunk,
       eta_seconds, heartbeat_at, created_at, started_at, finished_at, worker, outcome,
       left(error, 500) AS error, resumes, cancel_requested_at, cancel_reason, cancel_by,
       cancel_forced, cancel_deadline, pause_requested_at, pause_reason, pause_by, rss_bytes,
       cpu_percent, parent_id, root_id, depth, children, fail_fast
FROM tasks
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR actor = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
  -- Roots only: a tree's children are read through its tree view.
  AND (NOT $6::boolean OR parent_id IS NULL)
ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: list_results_page
-- Chunk results after chunk $2, in order, at most $3.
SELECT chunk, attempt, ok, result, created_at FROM task_results
WHERE task_id = $1 AND chunk > $2 ORDER BY chunk LIMIT $3;

-- name: insert_api_token
INSERT INTO api_tokens (name, role, secret_hash, created_by) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING name, role, created_at, created_by;

-- name: live_api_token
-- Looked up on every request that carries a token: the unique index answers it.
SELECT name, role FROM api_tokens WHERE secret_hash = $1 AND revoked_at IS NULL;

-- name: list_api_tokens
SELECT name, role, created_at, created_by FROM api_tokens
WHERE revoked_at IS NULL ORDER BY name;

-- name: revoke_api_token
UPDATE api_tokens SET revoked_at = now(), revoked_by = $2
WHERE name = $1 AND revoked_at IS NULL
RETURNING name, role, revoked_at;
