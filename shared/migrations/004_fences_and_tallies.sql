-- Counts by state without a hot row: every statement that changes states appends its
-- deltas (inserts never wait for each other); the reaper folds them into `task_tallies`.
-- Kept per actor and queue, so the size of any cancel-all scope is a small sum.
CREATE TABLE IF NOT EXISTS task_tallies (
    status text NOT NULL,
    actor  text NOT NULL,
    queue  text NOT NULL,
    n      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (status, actor, queue)
);
CREATE TABLE IF NOT EXISTS task_tally_deltas (
    id     bigserial PRIMARY KEY,
    status text NOT NULL,
    actor  text NOT NULL,
    queue  text NOT NULL,
    delta  bigint NOT NULL
);

DROP TRIGGER IF EXISTS task_counts_insert ON tasks;
DROP TRIGGER IF EXISTS task_counts_update ON tasks;
DROP TRIGGER IF EXISTS task_counts_delete ON tasks;
DROP FUNCTION IF EXISTS task_counts_apply();
DROP TABLE IF EXISTS task_counts;

LOCK TABLE tasks IN SHARE MODE;
INSERT INTO task_tallies (status, actor, queue, n)
SELECT status, actor, queue, count(*) FROM tasks GROUP BY status, actor, queue
ON CONFLICT (status, actor, queue) DO UPDATE SET n = excluded.n;

CREATE OR REPLACE FUNCTION task_tally_deltas_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_tally_deltas (status, actor, queue, delta)
        SELECT status, actor, queue, count(*) FROM new_rows GROUP BY status, actor, queue;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO task_tally_deltas (status, actor, queue, delta)
        SELECT status, actor, queue, -count(*) FROM old_rows GROUP BY status, actor, queue;
    ELSE
        INSERT INTO task_tally_deltas (status, actor, queue, delta)
        SELECT status, actor, queue, sum(delta) FROM (
            SELECT status, actor, queue, -1 AS delta FROM old_rows
            UNION ALL SELECT status, actor, queue, 1 FROM new_rows) x
        GROUP BY status, actor, queue HAVING sum(delta) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER task_tallies_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION task_tally_deltas_append();
CREATE TRIGGER task_tallies_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_tally_deltas_append();
CREATE TRIGGER task_tallies_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION task_tally_deltas_append();

-- When a task last entered `queued` (submit, resume, requeue), on the DB clock: a cancel
-- fence covers what entered before it.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS queued_at timestamptz;
UPDATE tasks SET queued_at = enqueued_at WHERE queued_at IS NULL;
ALTER TABLE tasks ALTER COLUMN queued_at SET DEFAULT clock_timestamp();
ALTER TABLE tasks ALTER COLUMN queued_at SET NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_queued_at_idx ON tasks (queued_at) WHERE status = 'queued';
-- The lost-message rule walks stranded queued rows oldest first, a page per pass.
CREATE INDEX IF NOT EXISTS tasks_enqueued_idx ON tasks (enqueued_at, id) WHERE status = 'queued';

-- One row per cancel-all: what it covers is every task that entered `queued` before `at`
-- within its scope. Claims refuse covered tasks; the reaper materializes them.
CREATE TABLE IF NOT EXISTS cancel_fences (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text,
    queue      text,
    reason     text,
    by         text NOT NULL,
    forced     boolean NOT NULL,
    audit_id   bigint,
    -- Queues that held covered messages when the fence was set: the broker purge walks these.
    queues     text[] NOT NULL DEFAULT '{}',
    covered    bigint NOT NULL DEFAULT 0,
    swept      bigint NOT NULL DEFAULT 0,
    swept_at   timestamptz,
    purged_at  timestamptz
);
CREATE INDEX IF NOT EXISTS cancel_fences_at_idx ON cancel_fences (at);
CREATE INDEX IF NOT EXISTS cancel_fences_open_idx ON cancel_fences (id)
    WHERE swept_at IS NULL OR purged_at IS NULL;
