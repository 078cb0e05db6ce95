-- Human approvals (decided exactly once) and idempotency keys (claimed exactly once).
CREATE TABLE approvals (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id),
    run_id           TEXT NOT NULL,
    tool             TEXT NOT NULL,
    args_hash        TEXT NOT NULL,
    args             TEXT NOT NULL,  -- JSON
    rule_id          TEXT,
    reason           TEXT,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    created_at       REAL NOT NULL,
    expires_at       REAL NOT NULL,
    decided_at       REAL,
    decided_by       TEXT,
    decision_reason  TEXT
) STRICT;
CREATE INDEX approvals_tenant ON approvals (tenant_id, status, created_at DESC);
CREATE INDEX approvals_due ON approvals (expires_at) WHERE status = 'pending';

CREATE TABLE idempotency_keys (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    key         TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    result      TEXT,  -- JSON
    created_at  REAL NOT NULL,
    PRIMARY KEY (tenant_id, key)
) STRICT, WITHOUT ROWID;
