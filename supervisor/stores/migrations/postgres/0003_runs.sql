-- Runs (with conversations) and the durable per-run event log.
CREATE TABLE runs (
    id               text PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    bundle           text NOT NULL,
    bundle_version   text NOT NULL,
    input            text NOT NULL,
    status           text NOT NULL CHECK (status IN
                       ('queued', 'running', 'waiting_approval', 'succeeded', 'failed', 'canceled', 'timed_out')),
    created_at       double precision NOT NULL,
    project_id       text,
    user_id          text,
    key_id           text,
    conversation_id  text,
    idempotency_key  text,
    request_hash     text,
    started_at       double precision,
    ended_at         double precision,
    output           text,
    error_code       text,
    error_message    text,
    worker_id        text,
    -- seq of the newest event; bumped in the same transaction as each insert (gap-free)
    last_seq         bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, idempotency_key)  -- NULL keys never collide
);
CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at DESC);
CREATE INDEX runs_conversation ON runs (tenant_id, conversation_id, created_at) WHERE conversation_id IS NOT NULL;
CREATE INDEX runs_active ON runs (status, created_at) WHERE status IN ('queued', 'running', 'waiting_approval');
SELECT stockade_tenant_rls('runs');

CREATE TABLE run_events (
    tenant_id  text NOT NULL,
    run_id     text NOT NULL,
    seq        bigint NOT NULL CHECK (seq > 0),
    type       text NOT NULL,
    data       jsonb NOT NULL,
    ts         double precision NOT NULL,
    PRIMARY KEY (run_id, seq),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id)
);
SELECT stockade_tenant_rls('run_events');
