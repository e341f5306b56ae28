-- API tokens: a name (who the audit trail names), a role, and the SHA-256 of the secret.
-- The secret itself is shown once when the token is made and never stored. A revoked row
-- stays for the record; its name may be given to a new token.
CREATE TABLE IF NOT EXISTS api_tokens (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_hash text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    revoked_at  timestamptz,
    revoked_by  text
);
-- One live token per name, so a name in an audit row means one holder at a time.
CREATE UNIQUE INDEX IF NOT EXISTS api_tokens_live_name_idx ON api_tokens (name)
    WHERE revoked_at IS NULL;

-- The task list's filters, newest first: by state (already made by 001, named here so the
-- pair is in one place) and by actor. Both filters at once walk the actor's index: one more
-- index on the hot table would cost every state change a write for a rare combination.
CREATE INDEX IF NOT EXISTS tasks_status_created_idx ON tasks (status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_actor_created_idx ON tasks (actor, created_at DESC, id DESC);
