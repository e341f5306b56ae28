-- Reading job trees for people (shared/tree_view.py): a few statements per view whatever
-- the tree's size, each batched over the nodes one level of the view shows.

-- name: tree_view_children
-- The first $2 children of each node in $1, oldest first (as tree_children_page pages
-- them), in the order the nodes were given.
SELECT c.* FROM unnest($1::uuid[]) WITH ORDINALITY AS p(id, n)
CROSS JOIN LATERAL (
    SELECT id, actor, queue, status, attempt, done, failed, total, eta_seconds, heartbeat_at,
           created_at, started_at, finished_at, parent_id, depth, children
    FROM tasks WHERE parent_id = p.id
    ORDER BY created_at, id
    LIMIT $2) c
ORDER BY p.n, c.created_at, c.id;

-- name: tree_view_totals
-- The subtree totals of each node in $1 (the node with every descendant), in the shape of
-- tree_aggregate, each row naming the node (`top`) it counts for.
WITH RECURSIVE sub(top, id) AS (
    SELECT n.id, n.id FROM unnest($1::uuid[]) AS n(id)
    UNION ALL
    SELECT sub.top, t.id FROM tasks t JOIN sub ON t.parent_id = sub.id
)
SELECT sub.top, t.status, count(*) AS n, coalesce(sum(t.done), 0)::bigint AS done,
       coalesce(sum(t.failed), 0)::bigint AS failed,
       coalesce(sum(t.total), 0)::bigint AS total,
       count(*) FILTER (WHERE t.total IS NULL) AS unknown_total,
       min(t.started_at) AS started_at, max(t.depth) AS depth
FROM tasks t JOIN sub ON t.id = sub.id
GROUP BY sub.top, t.status;

-- name: tree_view_roots
-- The monitor's trees: the roots with children among the tasks it shows ($1), and up to $2
-- roots waiting for their children (oldest first), each tree's totals read through its
-- root (tasks_root_idx, no walk), in the shape of tree_aggregate, with the root's own row.
WITH roots AS (
    SELECT id FROM tasks
    WHERE id = ANY($1::uuid[]) AND parent_id IS NULL AND children > 0
    UNION
    (SELECT id FROM tasks WHERE status = 'waiting' AND parent_id IS NULL
     ORDER BY started_at, id LIMIT $2)
), nodes AS (
    SELECT r.id AS top, t.status, t.done, t.failed, t.total, t.started_at, t.depth
    FROM roots r JOIN tasks t ON t.id = r.id
    UNION ALL
    SELECT r.id, t.status, t.done, t.failed, t.total, t.started_at, t.depth
    FROM roots r JOIN tasks t ON t.root_id = r.id
), totals AS (
    SELECT top, status, count(*) AS n, coalesce(sum(done), 0)::bigint AS done,
           coalesce(sum(failed), 0)::bigint AS failed, coalesce(sum(total), 0)::bigint AS total,
           count(*) FILTER (WHERE total IS NULL) AS unknown_total,
           min(started_at) AS started_at, max(depth) AS depth
    FROM nodes GROUP BY top, status
)
SELECT a.*, r.actor AS root_actor, r.status AS root_status, r.attempt AS root_attempt,
       r.done AS root_done, r.failed AS root_failed, r.total AS root_total,
       r.eta_seconds AS root_eta_seconds, r.started_at AS root_started_at,
       r.children AS root_children
FROM totals a JOIN tasks r ON r.id = a.top
ORDER BY r.started_at, r.id;
