-- Runs (with conversations) and the durable per-run event log.
CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id),
    bundle           TEXT NOT NULL,
    bundle_version   TEXT NOT NULL,
    input            TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                       ('queued', 'running', 'waiting_approval', 'succeeded', 'failed', 'canceled', 'timed_out')),
    created_at       REAL NOT NULL,
    project_id       TEXT,
    user_id          TEXT,
    key_id           TEXT,
    conversation_id  TEXT,
    idempotency_key  TEXT,
    request_hash     TEXT,
    started_at       REAL,
    ended_at         REAL,
    output           TEXT,
    error_code       TEXT,
    error_message    TEXT,
    worker_id        TEXT,
    -- seq of the newest event; bumped in the same transaction as each insert (gap-free)
    last_seq         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, idempotency_key)  -- NULL keys never collide
) STRICT;
CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at DESC);
CREATE INDEX runs_conversation ON runs (tenant_id, conversation_id, created_at) WHERE conversation_id IS NOT NULL;
CREATE INDEX runs_active ON runs (status, created_at) WHERE status IN ('queued', 'running', 'waiting_approval');

CREATE TABLE run_events (
    tenant_id  TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq > 0),
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,  -- JSON
    ts         REAL NOT NULL,
    PRIMARY KEY (run_id, seq),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id)
) STRICT, WITHOUT ROWID;
