-- Tasks and workers, folded from the TASKS stream (and worker tokens from TENANTS). A task's
-- status here is what its events say; a worker's online/stale/offline is computed when read, from
-- its last heartbeat, so folding the same events always gives the same rows.

CREATE TABLE tasks (
    tenant           text        NOT NULL,
    task_id          uuid        NOT NULL,
    kind             text        NOT NULL,
    status           text        NOT NULL,
    priority         smallint    NOT NULL,
    timeout_secs     integer     NOT NULL,
    max_attempts     integer     NOT NULL,
    attempt          integer     NOT NULL DEFAULT 0,
    worker_id        uuid,
    incident_id      uuid,
    input            jsonb       NOT NULL,
    result           jsonb,
    -- Every failed attempt's reason, in order.
    reasons          jsonb       NOT NULL DEFAULT '[]',
    progress         smallint,
    progress_message text,
    -- Outcomes reported by workers that no longer held the attempt.
    refused_outcomes integer     NOT NULL DEFAULT 0,
    lease_expiries   integer     NOT NULL DEFAULT 0,
    created_by       text        NOT NULL,
    created_at       timestamptz NOT NULL,
    claimed_at       timestamptz,
    not_before       timestamptz,
    finished_at      timestamptz,
    cancelled_by     text,
    updated_at       timestamptz NOT NULL,
    last_seq         bigint      NOT NULL,
    PRIMARY KEY (tenant, task_id)
);
CREATE INDEX tasks_listing ON tasks (tenant, created_at DESC, task_id DESC);
CREATE INDEX tasks_incident ON tasks (tenant, incident_id, created_at DESC) WHERE incident_id IS NOT NULL;

-- One row per log line; `seq` is the stream sequence of the TaskLogged that carried it.
CREATE TABLE task_logs (
    tenant   text        NOT NULL,
    task_id  uuid        NOT NULL,
    seq      bigint      NOT NULL,
    line_no  integer     NOT NULL,
    attempt  integer     NOT NULL,
    at       timestamptz NOT NULL,
    line     text        NOT NULL,
    PRIMARY KEY (tenant, task_id, seq, line_no)
);

CREATE TABLE workers (
    tenant        text        NOT NULL,
    worker_id     uuid        NOT NULL,
    name          text        NOT NULL,
    kinds         jsonb       NOT NULL,
    capacity      integer     NOT NULL,
    registered_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    -- The tasks the worker said it held at its last heartbeat.
    holding       jsonb       NOT NULL DEFAULT '[]',
    gone_at       timestamptz,
    gone_reason   text,
    last_seq      bigint      NOT NULL,
    PRIMARY KEY (tenant, worker_id)
);

CREATE TABLE worker_tokens (
    token_id   uuid PRIMARY KEY,
    tenant     text        NOT NULL,
    token_hash text        NOT NULL UNIQUE,
    prefix     text        NOT NULL,
    name       text        NOT NULL,
    issued_by  text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    revoked_at timestamptz,
    revoked_by text,
    last_seq   bigint      NOT NULL
);
CREATE INDEX worker_tokens_tenant ON worker_tokens (tenant, issued_at);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tasks', 'task_logs', 'workers', 'worker_tokens'] LOOP
        EXECUTE format('GRANT SELECT ON %I TO copilot_tenant', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO copilot_tenant
                 USING (tenant = current_setting(''copilot.tenant'', true))', t);
    END LOOP;
END
$$;
