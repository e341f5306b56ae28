-- name: insert_task
INSERT INTO tasks (id, actor, queue, kwargs, status, message_id, eta)
VALUES ($1, $2, $3, $4, 'queued', $5, $6)
RETURNING *;

-- name: delete_queued_task
DELETE FROM tasks WHERE id = $1 AND status = 'queued' AND attempt = 0;

-- name: get_task
SELECT * FROM tasks WHERE id = $1;

-- name: lock_task
SELECT * FROM tasks WHERE id = $1 FOR UPDATE;

-- name: list_tasks
-- Keyset pagination on (created_at, id), newest first.
SELECT * FROM tasks
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR actor = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $5;

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
-- running row only once its lease (last heartbeat, or start) has expired.
UPDATE tasks
SET status = 'running', attempt = attempt + 1, started_at = now(), heartbeat_at = NULL,
    worker = $3, pid = $4, finished_at = NULL, outcome = NULL, error = NULL
WHERE id = $1 AND message_id = $2
  AND (status = 'queued'
       OR (status = 'running'
           AND coalesce(heartbeat_at, started_at) < now() - make_interval(secs => $5)))
RETURNING attempt, started_at, kwargs, actor, queue;

-- name: heartbeat
-- Fenced by attempt: a stale execution gets no row back and learns it must stop.
UPDATE tasks
SET heartbeat_at = now(), done = $3, failed = $4, total = $5, current_chunk = $6, eta_seconds = $7
WHERE id = $1 AND attempt = $2 AND status IN ('running', 'cancelling')
RETURNING status, cancel_reason, cancel_forced, cancel_deadline;

-- name: execution_state
SELECT status, attempt, cancel_reason, cancel_forced, cancel_deadline FROM tasks WHERE id = $1;

-- name: save_result
-- A chunk result is written only by the live attempt; a failed chunk may be redone later.
INSERT INTO task_results (task_id, chunk, attempt, ok, result)
SELECT t.id, $3, $2, $4, $5 FROM tasks t
WHERE t.id = $1 AND t.attempt = $2 AND t.status IN ('running', 'cancelling')
ON CONFLICT (task_id, chunk) DO UPDATE
SET attempt = excluded.attempt, ok = excluded.ok, result = excluded.result, created_at = now()
WHERE NOT task_results.ok
RETURNING chunk;

-- name: finish_task
UPDATE tasks
SET status = $3, outcome = $4, error = $5, finished_at = now(),
    done = coalesce($6, done), failed = coalesce($7, failed), total = coalesce($8, total),
    heartbeat_at = now()
-- Only a cancel the DB recorded can end as `cancelled`.
WHERE id = $1 AND attempt = $2
  AND status = ANY(CASE WHEN $3 = 'cancelled' THEN ARRAY['cancelling']
                        ELSE ARRAY['running', 'cancelling'] END)
RETURNING status;

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
-- says whether this call did anything; the other columns are the row as it is now.
WITH cur AS (
    SELECT * FROM tasks WHERE id = $1 FOR UPDATE
), queued AS (
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(), outcome = 'never_started',
        cancel_requested_at = now(), cancel_reason = $2, cancel_by = $3, cancel_forced = $4
    FROM cur WHERE t.id = cur.id AND cur.status = 'queued'
    RETURNING t.*
), running AS (
    UPDATE tasks t
    SET status = 'cancelling', cancel_requested_at = now(), cancel_reason = $2,
        cancel_by = $3, cancel_forced = $4, cancel_deadline = now() + make_interval(secs => $5)
    FROM cur WHERE t.id = cur.id AND cur.status = 'running'
    RETURNING t.*
), hastened AS (
    UPDATE tasks t SET cancel_forced = true, cancel_deadline = least(t.cancel_deadline, now())
    FROM cur
    WHERE t.id = cur.id AND cur.status = 'cancelling' AND $4 AND NOT coalesce(cur.cancel_forced, false)
    RETURNING t.*
), changed AS (
    SELECT * FROM queued UNION ALL SELECT * FROM running UNION ALL SELECT * FROM hastened
), audit AS (
    INSERT INTO cancel_audit (by, reason, scope, forced, cancelled, cancelling, task_ids)
    SELECT $3, $2, jsonb_build_object('task_id', $1::text), $4,
           (cur.status = 'queued')::int, (cur.status <> 'queued')::int, ARRAY[$1::uuid]
    FROM cur WHERE EXISTS (SELECT 1 FROM changed)
    RETURNING id
)
SELECT (SELECT status FROM cur) AS was, EXISTS (SELECT 1 FROM changed) AS changed, now_row.*
FROM (SELECT * FROM changed
      UNION ALL SELECT * FROM cur WHERE NOT EXISTS (SELECT 1 FROM changed)) AS now_row;

-- name: cancel_all_queued
-- cancel-all runs these as separate statements of one transaction (queued, hasten, running):
-- each takes a fresh snapshot, so a claim committing meanwhile is seen by the next one.
UPDATE tasks
SET status = 'cancelled', finished_at = now(), outcome = 'never_started',
    cancel_requested_at = now(), cancel_reason = $3, cancel_by = $4, cancel_forced = $5
WHERE status = 'queued' AND ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR queue = $2)
RETURNING id, message_id;

-- name: cancel_all_running
UPDATE tasks
SET status = 'cancelling', cancel_requested_at = now(), cancel_reason = $3, cancel_by = $4,
    cancel_forced = $5, cancel_deadline = now() + make_interval(secs => $6)
WHERE status = 'running' AND ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR queue = $2)
RETURNING id, message_id;

-- name: cancel_all_hasten
-- A forced cancel-all pulls in the deadlines of tasks already cancelling.
UPDATE tasks SET cancel_forced = true, cancel_deadline = least(cancel_deadline, now())
WHERE status = 'cancelling' AND ($1::text IS NULL OR actor = $1)
  AND ($2::text IS NULL OR queue = $2)
RETURNING id, message_id;

-- name: insert_audit
INSERT INTO cancel_audit (by, reason, scope, forced, cancelled, cancelling, task_ids)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id, at;

-- name: list_audit
SELECT * FROM cancel_audit ORDER BY id DESC LIMIT $1;

-- name: resume_task
UPDATE tasks
SET status = 'queued', message_id = $2, enqueued_at = now(), finished_at = NULL,
    cancel_requested_at = NULL, cancel_reason = NULL, cancel_by = NULL, cancel_forced = NULL,
    cancel_deadline = NULL, outcome = NULL, error = NULL, heartbeat_at = NULL,
    eta = NULL, resumes = resumes + 1
WHERE id = $1 AND status = ANY($3::text[])
RETURNING *;

-- name: stale_executions
-- Running or cancelling rows whose heartbeat (or, without one, whose start) is too old.
SELECT id, actor, queue, status, attempt, message_id, worker, pid, heartbeat_at, started_at,
       cancel_reason, resumes
FROM tasks
WHERE status IN ('running', 'cancelling')
  AND coalesce(heartbeat_at, started_at) < now() - make_interval(secs => $1);

-- name: due_cancellations
SELECT id, actor, attempt, worker, pid, message_id, cancel_deadline, cancel_forced,
       extract(epoch FROM now() - coalesce(heartbeat_at, started_at))::float8 AS silent_for
FROM tasks
WHERE status = 'cancelling' AND cancel_deadline <= now() - make_interval(secs => $1);

-- name: mark_dead
-- The reaper's verdict on an execution that is gone: lost, or cancelled if a cancel was pending.
UPDATE tasks
SET status = CASE WHEN status = 'cancelling' THEN 'cancelled' ELSE 'lost' END,
    outcome = $3, finished_at = now()
WHERE id = $1 AND attempt = $2 AND status IN ('running', 'cancelling')
RETURNING status;

-- name: requeue_execution
-- A new attempt of a running execution that failed or died (retries, automatic resume).
-- Never for one being cancelled: that would bring cancelled work back.
UPDATE tasks
SET status = 'queued', message_id = $3, enqueued_at = now(), heartbeat_at = NULL,
    eta = $4, error = $5, resumes = resumes + 1
WHERE id = $1 AND attempt = $2 AND status = 'running'
RETURNING *;

-- name: active_by_ids
SELECT id, status, attempt, message_id, finished_at,
       extract(epoch FROM now() - finished_at)::float8 AS finished_ago
FROM tasks WHERE id = ANY($1::uuid[]);

-- name: stranded_queued
SELECT id, actor, queue, kwargs, message_id, requeues, enqueued_at, eta FROM tasks
WHERE status = 'queued'
  AND enqueued_at < now() - make_interval(secs => $1)
  AND (eta IS NULL OR eta < now() - make_interval(secs => $1));

-- name: requeue_message
UPDATE tasks SET message_id = $3, enqueued_at = now(), requeues = requeues + 1
WHERE id = $1 AND message_id = $2 AND status = 'queued'
RETURNING *;

-- name: mark_queued_lost
UPDATE tasks SET status = 'lost', outcome = 'gone', finished_at = now()
WHERE id = $1 AND message_id = $2 AND status = 'queued'
RETURNING status;

-- name: active_counts
SELECT status, count(*) AS n FROM tasks
WHERE status IN ('queued', 'running', 'cancelling') GROUP BY status;

-- name: all_counts
-- Kept by triggers (see migration 003): no scan of the history.
SELECT status, n FROM task_counts;

-- name: active_rows
SELECT id, actor, status, attempt, worker, pid, done, failed, total, current_chunk,
       eta_seconds, heartbeat_at, started_at, created_at
FROM tasks WHERE status IN ('running', 'cancelling') ORDER BY started_at;

-- name: active_queues
-- Queues that still hold work in the DB's view (served by the partial index).
SELECT DISTINCT queue FROM tasks WHERE status IN ('queued', 'running', 'cancelling');

-- name: force_kill_all
-- taskctl force-kill: every non-terminal row ends now, in one statement. Rows that ran
-- (or were being cancelled) were killed; queued ones never started.
WITH doomed AS (
    SELECT id, status FROM tasks
    WHERE status IN ('queued', 'running', 'cancelling')
    FOR UPDATE
)
UPDATE tasks t
SET status = 'cancelled', finished_at = now(),
    outcome = CASE WHEN doomed.status = 'queued' THEN 'never_started' ELSE 'killed' END,
    cancel_requested_at = coalesce(t.cancel_requested_at, now()),
    cancel_reason = $1, cancel_by = $2, cancel_forced = true,
    cancel_deadline = least(coalesce(t.cancel_deadline, now()), now())
FROM doomed
WHERE t.id = doomed.id AND t.status IN ('queued', 'running', 'cancelling')
RETURNING t.id, t.message_id, doomed.status AS was;

-- name: prune_history
-- Results go with their task (ON DELETE CASCADE). Bounded per call.
WITH old AS (
    SELECT id FROM tasks
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'lost')
      AND finished_at < now() - make_interval(days => $1)
    ORDER BY finished_at LIMIT $2
)
DELETE FROM tasks t USING old WHERE t.id = old.id;

-- name: cancelling_among
-- The guardian's view of its own executions: which are being cancelled, and by when.
SELECT id, attempt, message_id, cancel_deadline,
       extract(epoch FROM cancel_deadline - now())::float8 AS due_in
FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'cancelling';
