-- Job trees. A task spawned by another (or submitted with a parent) names its parent and
-- the tree's root; `depth` is 0 for a root. `spawn_key` makes a spawn idempotent: a resumed
-- parent that spawns the same child again gets the row it already made.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS parent_id uuid;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS root_id uuid;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS depth integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS spawn_key text;
-- On a parent: how many children it has (bounded by TREE_MAX_CHILDREN), whether a failed
-- child cancels its siblings, and when its children were all done (its `on_children_done`
-- step was queued, or ran).
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS children integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS fail_fast boolean NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS children_done_at timestamptz;
-- A child of a `fail_fast` parent failed: its siblings were cancelled, it spawns no more.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS child_failed_at timestamptz;

-- `waiting`: the task's own code has finished, its children have not. It holds no process.
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check CHECK (status IN
    ('queued', 'running', 'cancelling', 'pausing', 'paused', 'waiting', 'succeeded', 'failed',
     'cancelled', 'lost'));

-- A parent's children in the order they came (the tree view pages through them).
CREATE INDEX IF NOT EXISTS tasks_parent_idx ON tasks (parent_id, created_at, id)
    WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_spawn_key_idx ON tasks (parent_id, spawn_key)
    WHERE spawn_key IS NOT NULL;
-- A tree's aggregate reads every node by its root; a subtree cancel starts from the tree's
-- live rows (executions and waiting parents), a few whatever the tree's size.
CREATE INDEX IF NOT EXISTS tasks_root_idx ON tasks (root_id) WHERE root_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_root_live_idx ON tasks (root_id)
    WHERE root_id IS NOT NULL AND status IN ('running', 'cancelling', 'pausing', 'waiting');
-- The reaper's tree rules: waiting parents, and unfinished children (whose ancestors may
-- have been stopped).
CREATE INDEX IF NOT EXISTS tasks_waiting_idx ON tasks (id) WHERE status = 'waiting';
CREATE INDEX IF NOT EXISTS tasks_open_children_idx ON tasks (parent_id)
    WHERE parent_id IS NOT NULL
      AND status IN ('queued', 'running', 'cancelling', 'pausing', 'paused', 'waiting');
-- A revoke in Celery's own control may name a waiting parent's message too.
DROP INDEX IF EXISTS tasks_unfinished_message_idx;
CREATE INDEX IF NOT EXISTS tasks_unfinished_message_idx ON tasks (message_id)
    WHERE status IN ('queued', 'running', 'cancelling', 'pausing', 'paused', 'waiting');
