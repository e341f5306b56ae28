-- Counts by state, kept by statement-level triggers, so reading them costs nothing however
-- long the history. A statement that changes no state (a heartbeat) writes nothing here.
CREATE TABLE IF NOT EXISTS task_counts (
    status text PRIMARY KEY,
    n      bigint NOT NULL DEFAULT 0
);
INSERT INTO task_counts (status)
SELECT s FROM unnest(ARRAY['queued', 'running', 'cancelling', 'succeeded', 'failed',
                           'cancelled', 'lost']) AS s
ON CONFLICT DO NOTHING;
LOCK TABLE tasks IN SHARE MODE;
UPDATE task_counts c SET n = coalesce((SELECT count(*) FROM tasks t WHERE t.status = c.status), 0);

CREATE OR REPLACE FUNCTION task_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE task_counts c SET n = c.n + d.delta
        FROM (SELECT status, count(*) AS delta FROM new_rows GROUP BY status) d
        WHERE c.status = d.status;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE task_counts c SET n = c.n - d.delta
        FROM (SELECT status, count(*) AS delta FROM old_rows GROUP BY status) d
        WHERE c.status = d.status;
    ELSE
        UPDATE task_counts c SET n = c.n + d.delta
        FROM (SELECT status, sum(delta) AS delta
              FROM (SELECT status, -1 AS delta FROM old_rows
                    UNION ALL SELECT status, 1 FROM new_rows) x
              GROUP BY status) d
        WHERE c.status = d.status AND d.delta <> 0;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS task_counts_insert ON tasks;
DROP TRIGGER IF EXISTS task_counts_update ON tasks;
DROP TRIGGER IF EXISTS task_counts_delete ON tasks;
CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply();
CREATE TRIGGER task_counts_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply();
CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply();
