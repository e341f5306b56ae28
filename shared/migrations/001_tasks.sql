CREATE TABLE IF NOT EXISTS actors (
    name          text PRIMARY KEY,
    queue         text NOT NULL,
    params        jsonb NOT NULL,
    options       jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS tasks (
    id                  uuid PRIMARY KEY,
    actor               text NOT NULL,
    queue               text NOT NULL,
    kwargs              jsonb NOT NULL,
    status              text NOT NULL,
    -- Fencing token: bumped by every claim; writes from an older attempt are refused.
    attempt             integer NOT NULL DEFAULT 0,
    -- Celery message id of the current enqueue; a message with another id is stale.
    message_id          uuid NOT NULL,
    eta                 timestamptz,
    done                integer NOT NULL DEFAULT 0,
    failed              integer NOT NULL DEFAULT 0,
    total               integer,
    current_chunk       integer,
    eta_seconds         double precision,
    heartbeat_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    enqueued_at         timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    worker              text,
    pid                 integer,
    cancel_requested_at timestamptz,
    cancel_reason       text,
    cancel_by           text,
    cancel_forced       boolean,
    cancel_deadline     timestamptz,
    outcome             text,
    error               text,
    requeues            integer NOT NULL DEFAULT 0,
    resumes             integer NOT NULL DEFAULT 0,
    CONSTRAINT tasks_status_check CHECK (status IN
        ('queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled', 'lost'))
);

-- Hot paths only ever touch non-terminal rows: keep them in small partial indexes.
CREATE INDEX IF NOT EXISTS tasks_active_idx ON tasks (status, actor, queue)
    WHERE status IN ('queued', 'running', 'cancelling');
CREATE INDEX IF NOT EXISTS tasks_cancelling_deadline_idx ON tasks (cancel_deadline)
    WHERE status = 'cancelling';
CREATE INDEX IF NOT EXISTS tasks_created_idx ON tasks (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_status_created_idx ON tasks (status, created_at DESC, id DESC);

CREATE TABLE IF NOT EXISTS task_results (
    task_id     uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    chunk       integer NOT NULL,
    attempt     integer NOT NULL,
    ok          boolean NOT NULL DEFAULT true,
    result      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, chunk)
);

CREATE TABLE IF NOT EXISTS cancel_audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    by          text NOT NULL,
    reason      text,
    scope       jsonb NOT NULL,
    forced      boolean NOT NULL,
    cancelled   integer NOT NULL,
    cancelling  integer NOT NULL,
    task_ids    uuid[] NOT NULL DEFAULT '{}'
);
