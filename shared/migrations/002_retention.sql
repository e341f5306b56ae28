-- Finished history is pruned after the retention period; this keeps that cheap.
CREATE INDEX IF NOT EXISTS tasks_finished_idx ON tasks (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'lost');
CREATE INDEX IF NOT EXISTS cancel_audit_at_idx ON cancel_audit (at);
