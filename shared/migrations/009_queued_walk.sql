-- The fence sweep walks the queued rows a cancel-all covers in (queued_at, id) order and
-- goes on after the last row each batch took, from either end of the covered range: rows
-- that entered `queued` in the same instant (one INSERT of many) are then taken in id order,
-- as the primary key and the creation-order indexes hold them, instead of in heap order, which
-- would scatter each batch's index writes over the whole of those indexes. The same index
-- answers everything the single-column one did.
CREATE INDEX IF NOT EXISTS tasks_queued_walk_idx ON tasks (queued_at, id) WHERE status = 'queued';
DROP INDEX IF EXISTS tasks_queued_at_idx;
