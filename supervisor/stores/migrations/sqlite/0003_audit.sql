-- The per-tenant hash-chained audit log. Append-only: triggers refuse UPDATE and
-- DELETE. audit_heads holds each chain's head; appenders read and advance it
-- inside one BEGIN IMMEDIATE transaction (the database write lock).
CREATE TABLE audit_log (
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    seq             INTEGER NOT NULL CHECK (seq > 0),
    ts              REAL NOT NULL,
    kind            TEXT NOT NULL,
    run_id          TEXT,
    tool            TEXT,
    args_hash       TEXT,
    rule_id         TEXT,
    policy_version  TEXT,
    code            TEXT,
    cost_micro      INTEGER NOT NULL DEFAULT 0,
    detail          TEXT NOT NULL DEFAULT '{}',  -- JSON
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL,
    mac             TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX audit_log_run ON audit_log (tenant_id, run_id, seq) WHERE run_id IS NOT NULL;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE refused)');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (DELETE refused)');
END;

CREATE TABLE audit_heads (
    tenant_id  TEXT PRIMARY KEY REFERENCES tenants (id),
    seq        INTEGER NOT NULL DEFAULT 0,
    hash       TEXT NOT NULL
) STRICT;
