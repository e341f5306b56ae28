-- Pause and resume. `pausing`: asked to stop and keep its checkpoint, within a grace period
-- like a cancel's; `paused`: stopped, holding no process and no message, until an operator
-- resumes (a fresh message) or cancels it. Nothing reaps a paused row.
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check CHECK (status IN
    ('queued', 'running', 'cancelling', 'pausing', 'paused', 'succeeded', 'failed', 'cancelled',
     'lost'));

-- Who paused the task, when and why (the audit row keeps the same); cleared by its resume.
-- A pausing row's deadline is `cancel_deadline`: the time its process must be gone by,
-- whichever stop was asked for (a row is never cancelling and pausing at once).
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS pause_requested_at timestamptz;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS pause_reason text;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS pause_by text;
-- A resume asked for while the task was still `pausing`: when its execution has stopped, it
-- is queued again under a fresh message instead of being left `paused`.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS resume_requested_at timestamptz;

-- The hot paths' partial indexes, with the new active state.
DROP INDEX IF EXISTS tasks_active_idx;
CREATE INDEX IF NOT EXISTS tasks_active_idx ON tasks (status, actor, queue)
    WHERE status IN ('queued', 'running', 'cancelling', 'pausing');
-- The reaper's kill step walks the deadlines of both kinds of stop.
DROP INDEX IF EXISTS tasks_cancelling_deadline_idx;
CREATE INDEX IF NOT EXISTS tasks_stopping_deadline_idx ON tasks (cancel_deadline)
    WHERE status IN ('cancelling', 'pausing');
-- resume-all takes paused rows in the order they were queued, a batch at a time.
CREATE INDEX IF NOT EXISTS tasks_paused_idx ON tasks (queued_at, id) WHERE status = 'paused';
-- A revoke in Celery's own control names messages: their unfinished rows, found at once.
CREATE INDEX IF NOT EXISTS tasks_unfinished_message_idx ON tasks (message_id)
    WHERE status IN ('queued', 'running', 'cancelling', 'pausing', 'paused');
