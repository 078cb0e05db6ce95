-- Human approvals (decided exactly once) and idempotency keys (claimed exactly once).
CREATE TABLE approvals (
    id               text PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    run_id           text NOT NULL,
    tool             text NOT NULL,
    args_hash        text NOT NULL,
    args             jsonb NOT NULL,
    rule_id          text,
    reason           text,
    status           text NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    created_at       double precision NOT NULL,
    expires_at       double precision NOT NULL,
    decided_at       double precision,
    decided_by       text,
    decision_reason  text
);
CREATE INDEX approvals_tenant ON approvals (tenant_id, status, created_at DESC);
CREATE INDEX approvals_due ON approvals (expires_at) WHERE status = 'pending';
SELECT stockade_tenant_rls('approvals');

CREATE TABLE idempotency_keys (
    tenant_id   text NOT NULL REFERENCES tenants (id),
    key         text NOT NULL,
    state       text NOT NULL CHECK (state IN ('pending', 'done')),
    result      jsonb,
    created_at  double precision NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
SELECT stockade_tenant_rls('idempotency_keys');
