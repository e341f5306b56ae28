-- Job trees: spawning children, settling a waiting parent, and a subtree's cancel, pause,
-- resume and view. A node's subtree is found through `parent_id` (tasks_parent_idx); depth
-- is bounded by TREE_MAX_DEPTH, and a child always names a parent that existed before it,
-- so the walk has no cycle to loop on.

-- name: tree_lock_parent
-- Before children are added: reads cancel_fences first (see fence_lock), like every move
-- into `queued`, then holds the parent's row until the children are written. A subtree
-- cancel takes the fence lock first, so it either sees the new children or commits before
-- they are made (and this sees the parent stopping).
SELECT id, actor, queue, status, attempt, depth, coalesce(root_id, id) AS root_id, children,
       fail_fast, child_failed_at
FROM tasks WHERE id = $1
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)  -- takes the fence lock first
FOR NO KEY UPDATE OF tasks;

-- name: tree_insert_children
-- Children of $1 (root $2, depth $3), each with its own id, actor, queue, kwargs, message,
-- ETA and spawn key. A key the parent already used gives back nothing: the child it made
-- then stands (a resumed parent never spawns twice).
INSERT INTO tasks (id, actor, queue, kwargs, status, message_id, eta, parent_id, root_id,
                   depth, spawn_key, fail_fast)
SELECT u.id, u.actor, u.queue, u.kwargs, 'queued', u.message_id, u.eta, $1, $2, $3,
       u.spawn_key, u.fail_fast
FROM unnest($4::uuid[], $5::text[], $6::text[], $7::jsonb[], $8::uuid[], $9::timestamptz[],
            $10::text[], $11::boolean[])
     AS u(id, actor, queue, kwargs, message_id, eta, spawn_key, fail_fast)
ON CONFLICT (parent_id, spawn_key) WHERE spawn_key IS NOT NULL DO NOTHING
RETURNING id, actor, queue, message_id, eta, queued_at, spawn_key, parent_id;

-- name: tree_existing_children
-- The children a parent made earlier under these spawn keys.
SELECT id, actor, queue, status, message_id, eta, queued_at, spawn_key FROM tasks
WHERE parent_id = $1 AND spawn_key = ANY($2::text[]);

-- name: tree_count_children
UPDATE tasks SET children = children + $2 WHERE id = $1 RETURNING children;

-- name: tree_mark_child_failed
-- A child of a `fail_fast` parent failed: the parent spawns no more (its later spawns fail).
UPDATE tasks SET child_failed_at = coalesce(child_failed_at, now())
WHERE id = $1 AND fail_fast
RETURNING child_failed_at;

-- name: tree_settle_probe
-- Whether a parent may be settled now: it waits, and no child of it is unfinished.
SELECT p.status, p.actor, p.fail_fast, p.parent_id, p.children_done_at,
       EXISTS (SELECT 1 FROM tasks c
               WHERE c.parent_id = p.id
                 AND c.status IN ('queued', 'running', 'cancelling', 'pausing', 'paused',
                                  'waiting')) AS open
FROM tasks p WHERE p.id = $1;

-- name: tree_lock_waiting
-- The settle's first statement: the fence lock (see fence_lock; a settle may queue the
-- parent's `on_children_done` step), then the waiting parent's row.
SELECT id, actor, queue, parent_id, children_done_at, eta FROM tasks
WHERE id = $1 AND status = 'waiting'
  AND NOT EXISTS (SELECT FROM cancel_fences WHERE false)  -- takes the fence lock first
FOR UPDATE OF tasks;

-- name: tree_children_outcome
-- Read under the parent's lock, after every child ended: how they ended.
SELECT count(*) FILTER (WHERE status IN ('queued', 'running', 'cancelling', 'pausing',
                                         'paused', 'waiting')) AS open,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status IN ('failed', 'lost')) AS failed,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled
FROM tasks WHERE parent_id = $1;

-- name: tree_settle
-- A waiting parent whose children all ended: `failed` when any failed or was lost;
-- else back to `queued` under a fresh message ($3) to run its `on_children_done` step
-- ($4: the actor has one and it has not run); else `succeeded`.
UPDATE tasks
SET status = CASE WHEN $2 > 0 THEN 'failed' WHEN $4 THEN 'queued' ELSE 'succeeded' END,
    outcome = CASE WHEN $2 > 0 THEN 'error' END,
    error = CASE WHEN $2 > 0 THEN $2::text || ' of ' || children::text || ' children failed' END,
    finished_at = CASE WHEN $4 AND $2 = 0 THEN NULL ELSE now() END,
    children_done_at = CASE WHEN $4 AND $2 = 0 THEN now() ELSE children_done_at END,
    message_id = CASE WHEN $4 AND $2 = 0 THEN $3 ELSE message_id END,
    enqueued_at = CASE WHEN $4 AND $2 = 0 THEN now() ELSE enqueued_at END,
    queued_at = CASE WHEN $4 AND $2 = 0 THEN clock_timestamp() ELSE queued_at END,
    heartbeat_at = CASE WHEN $4 AND $2 = 0 THEN NULL ELSE heartbeat_at END
WHERE id = $1 AND status = 'waiting'
RETURNING id, actor, queue, status, message_id, eta, queued_at, parent_id;

-- name: tree_subtree_cancel
-- The part of a subtree cancel that answers (after fence_lock): every execution under $1
-- (whose tree's root is $6) goes to `cancelling` due in $5 seconds, a forced cancel ($4)
-- pulls in the deadline of one already cancelling, and a waiting parent under it ends
-- `cancelled`. It starts from the tree's live rows and walks up from each (O(executions x
-- depth)), never down through the tree: the never-started nodes are the sweep's.
WITH RECURSIVE live AS (
    SELECT id, parent_id FROM tasks
    WHERE root_id = $6 AND status IN ('running', 'pausing', 'cancelling', 'waiting')
), up(id, anc) AS (
    SELECT id, parent_id FROM live
    UNION ALL
    SELECT up.id, t.parent_id FROM up JOIN tasks t ON t.id = up.anc
    WHERE up.anc <> $1 AND t.parent_id IS NOT NULL
), cur AS (
    SELECT t.id, t.status FROM tasks t
    WHERE t.id IN (SELECT id FROM up WHERE anc = $1)
      AND t.status IN ('running', 'pausing', 'cancelling', 'waiting')
    ORDER BY t.id
    FOR UPDATE OF t
)
UPDATE tasks t
SET status = CASE WHEN cur.status = 'waiting' THEN 'cancelled' ELSE 'cancelling' END,
    finished_at = CASE WHEN cur.status = 'waiting' THEN now() ELSE t.finished_at END,
    outcome = CASE WHEN cur.status = 'waiting' THEN 'cooperative' ELSE t.outcome END,
    cancel_requested_at = CASE WHEN cur.status = 'cancelling' THEN t.cancel_requested_at
                               ELSE now() END,
    cancel_reason = CASE WHEN cur.status = 'cancelling' THEN t.cancel_reason ELSE $2 END,
    cancel_by = CASE WHEN cur.status = 'cancelling' THEN t.cancel_by ELSE $3 END,
    cancel_forced = CASE WHEN cur.status = 'cancelling' THEN coalesce(t.cancel_forced, false) OR $4
                         ELSE $4 END,
    cancel_deadline = CASE WHEN cur.status IN ('running', 'pausing')
                           THEN now() + make_interval(secs => $5)
                           WHEN cur.status = 'cancelling' AND $4
                           THEN least(t.cancel_deadline, now())
                           ELSE t.cancel_deadline END
FROM cur
WHERE t.id = cur.id
  AND (cur.status <> 'cancelling' OR ($4 AND NOT coalesce(t.cancel_forced, false)))
RETURNING t.id, cur.status AS was, t.status, t.message_id, t.worker;

-- name: tree_sweep_root
-- The rest of a cancel of a whole tree ($1 its root), after the answer: up to $5 of its
-- never-started nodes end `cancelled`, a short batch at a time. SKIP LOCKED: it never
-- waits for a claim (which refuses them anyway, its ancestor being stopped).
WITH batch AS (
    SELECT id FROM tasks WHERE root_id = $1 AND status IN ('queued', 'paused')
    LIMIT $5
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t
SET status = 'cancelled', finished_at = now(),
    outcome = CASE WHEN t.status = 'paused' AND t.outcome IS NOT NULL THEN t.outcome
                   WHEN t.attempt > 0 THEN 'requeued' ELSE 'never_started' END,
    cancel_requested_at = now(), cancel_reason = $2, cancel_by = $3, cancel_forced = $4
FROM batch WHERE t.id = batch.id AND t.status IN ('queued', 'paused');

-- name: tree_sweep_subtree
-- The same under an inner node $1 (walking down from it).
WITH RECURSIVE sub(id) AS (
    SELECT id FROM tasks WHERE parent_id = $1
    UNION ALL
    SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id
), batch AS (
    SELECT t.id FROM tasks t JOIN sub ON t.id = sub.id
    WHERE t.status IN ('queued', 'paused')
    LIMIT $5
    FOR UPDATE OF t SKIP LOCKED
)
UPDATE tasks t
SET status = 'cancelled', finished_at = now(),
    outcome = CASE WHEN t.status = 'paused' AND t.outcome IS NOT NULL THEN t.outcome
                   WHEN t.attempt > 0 THEN 'requeued' ELSE 'never_started' END,
    cancel_requested_at = now(), cancel_reason = $2, cancel_by = $3, cancel_forced = $4
FROM batch WHERE t.id = batch.id AND t.status IN ('queued', 'paused');

-- name: tree_root_of
SELECT coalesce(root_id, id) FROM tasks WHERE id = $1;

-- name: audit_add_cancelled
UPDATE cancel_audit SET cancelled = cancelled + $2 WHERE id = $1;

-- name: tree_subtree_pause
-- Every node under $1 (not $1 itself), after fence_lock: a queued one is paused at once, a
-- running one goes to `pausing` due in $4 seconds. A queued one a cancel fence covers is
-- the fence's (it never runs).
WITH RECURSIVE sub(id) AS (
    SELECT id FROM tasks WHERE parent_id = $1
    UNION ALL
    SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id
), cur AS (
    SELECT t.id, t.status FROM tasks t JOIN sub ON t.id = sub.id
    WHERE t.status IN ('queued', 'running')
      AND NOT (t.status = 'queued' AND EXISTS (
          SELECT 1 FROM cancel_fences f
          WHERE f.at > t.queued_at AND (f.actor IS NULL OR f.actor = t.actor)
            AND (f.queue IS NULL OR f.queue = t.queue)))
    ORDER BY t.id
    FOR UPDATE OF t
)
UPDATE tasks t
SET status = CASE WHEN cur.status = 'running' THEN 'pausing' ELSE 'paused' END,
    pause_requested_at = now(), pause_reason = $2, pause_by = $3,
    resume_requested_at = NULL,
    cancel_deadline = CASE WHEN cur.status = 'running' THEN now() + make_interval(secs => $4)
                           ELSE t.cancel_deadline END
FROM cur WHERE t.id = cur.id
RETURNING t.id, cur.status AS was, t.status, t.message_id, t.worker;

-- name: tree_subtree_resume
-- Every node under $1 (not $1 itself) that stopped short of success, after fence_lock:
-- queued again under a fresh message, from its checkpoint. A paused node keeps its
-- schedule and its automatic-resume budget (as resume_task); a paused node a cancel fence
-- covers is the fence's. One still pausing is queued again when it has stopped.
WITH RECURSIVE sub(id) AS (
    SELECT id FROM tasks WHERE parent_id = $1
    UNION ALL
    SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id
), cur AS (
    SELECT t.id, t.status FROM tasks t JOIN sub ON t.id = sub.id
    WHERE t.status IN ('paused', 'failed', 'cancelled', 'lost')
      AND NOT (t.status = 'paused' AND EXISTS (
          SELECT 1 FROM cancel_fences f
          WHERE f.at > t.queued_at AND (f.actor IS NULL OR f.actor = t.actor)
            AND (f.queue IS NULL OR f.queue = t.queue)))
    ORDER BY t.id
    FOR UPDATE OF t
)
UPDATE tasks t
SET status = 'queued', message_id = gen_random_uuid(), enqueued_at = now(),
    queued_at = clock_timestamp(), finished_at = NULL,
    cancel_requested_at = NULL, cancel_reason = NULL, cancel_by = NULL, cancel_forced = NULL,
    cancel_deadline = NULL, outcome = NULL, error = NULL, heartbeat_at = NULL,
    eta = CASE WHEN cur.status = 'paused' THEN t.eta END,
    resumes = t.resumes + CASE WHEN cur.status = 'paused' THEN 0 ELSE 1 END,
    pause_requested_at = NULL, pause_reason = NULL, pause_by = NULL, child_failed_at = NULL
FROM cur WHERE t.id = cur.id
RETURNING t.id, cur.status AS was, t.status, t.actor, t.queue, t.message_id, t.eta,
          t.queued_at;

-- name: tree_subtree_resume_pausing
-- Nodes under $1 still stopping for a pause: each is queued again once stopped.
WITH RECURSIVE sub(id) AS (
    SELECT id FROM tasks WHERE parent_id = $1
    UNION ALL
    SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id
)
UPDATE tasks t SET resume_requested_at = coalesce(t.resume_requested_at, now())
WHERE t.id IN (SELECT id FROM sub) AND t.status = 'pausing'
RETURNING t.id;

-- name: tree_reset_node
-- A node resumed with its subtree forgets a tripped fail-fast: its children run again.
UPDATE tasks SET child_failed_at = NULL WHERE id = $1;

-- name: tree_aggregate
-- One subtree's totals (the node with every descendant): nodes by state, chunks done,
-- failed and known in total, nodes whose total is still unknown, the busiest pace.
WITH RECURSIVE sub(id) AS (
    SELECT $1::uuid
    UNION ALL
    SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id
)
SELECT t.status, count(*) AS n, coalesce(sum(t.done), 0)::bigint AS done,
       coalesce(sum(t.failed), 0)::bigint AS failed,
       coalesce(sum(t.total), 0)::bigint AS total,
       count(*) FILTER (WHERE t.total IS NULL) AS unknown_total,
       max(t.eta_seconds) AS eta_seconds,
       min(t.started_at) AS started_at, max(t.finished_at) AS finished_at,
       max(t.depth) AS depth
FROM tasks t JOIN sub ON t.id = sub.id
GROUP BY t.status;

-- name: tree_children_page
-- One page of a node's children, oldest first after the cursor ($2, $3), each with how many
-- children it has of its own.
-- The columns are the list view's (list_task_summaries).
SELECT id, actor, queue, status, attempt, eta, done, failed, total, current_chunk,
       eta_seconds, heartbeat_at, created_at, started_at, finished_at, worker, outcome,
       left(error, 500) AS error, resumes, cancel_requested_at, cancel_reason, cancel_by,
       cancel_forced, cancel_deadline, pause_requested_at, pause_reason, pause_by, rss_bytes,
       cpu_percent, parent_id, root_id, depth, children, fail_fast
FROM tasks
WHERE parent_id = $1
  AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
ORDER BY created_at, id
LIMIT $4;

-- name: tree_ancestors
-- A node's ancestors, nearest first.
WITH RECURSIVE up(id, hops) AS (
    SELECT parent_id, 1 FROM tasks WHERE id = $1 AND parent_id IS NOT NULL
    UNION ALL
    SELECT t.parent_id, up.hops + 1 FROM up JOIN tasks t ON t.id = up.id
    WHERE t.parent_id IS NOT NULL
)
SELECT t.id, t.actor, t.status FROM up JOIN tasks t ON t.id = up.id ORDER BY up.hops;

-- name: tree_waiting_settled
-- The reaper's rule: waiting parents none of whose children is unfinished, a page at a time.
SELECT p.id FROM tasks p
WHERE p.status = 'waiting'
  AND NOT EXISTS (SELECT 1 FROM tasks c
                  WHERE c.parent_id = p.id
                    AND c.status IN ('queued', 'running', 'cancelling', 'pausing', 'paused',
                                     'waiting'))
LIMIT $1;

-- name: tree_orphaned
-- The reaper's rule: unfinished children whose parent is cancelled or being cancelled (a
-- subtree cancel interrupted between its two transactions, or a child spawned meanwhile).
SELECT DISTINCT c.parent_id AS id FROM tasks c JOIN tasks p ON p.id = c.parent_id
WHERE c.parent_id IS NOT NULL
  AND c.status IN ('queued', 'running', 'pausing', 'paused', 'waiting')
  AND p.status IN ('cancelling', 'cancelled')
  -- Not one whose cancel is still sweeping its subtree right now.
  AND coalesce(p.cancel_requested_at, p.finished_at, '-infinity') < now() - interval '10 seconds'
LIMIT $1;

-- name: cancel_all_waiting
-- cancel-all's waiting side: parents in scope whose own code is done hold no process, so
-- they end `cancelled` at once (their children are covered by the fence or cancelled as
-- running ones). Runs after fence_lock.
UPDATE tasks
SET status = 'cancelled', finished_at = now(), outcome = 'cooperative',
    cancel_requested_at = now(), cancel_reason = $3, cancel_by = $4, cancel_forced = $5
WHERE status = 'waiting' AND ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR queue = $2)
RETURNING id;

-- name: tree_delete_new
-- A batch the broker refused: its rows go again (none was ever claimed).
DELETE FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'queued' AND attempt = 0;

-- name: tree_uncount_children
UPDATE tasks SET children = greatest(children - $2, 0) WHERE id = $1;

-- name: tree_active_roots
-- Roots of trees with an execution under way (running rows are few: the pool's size).
SELECT DISTINCT coalesce(root_id, id) AS root FROM tasks
WHERE status IN ('running', 'cancelling', 'pausing') AND (root_id IS NOT NULL OR children > 0)
LIMIT $1;
