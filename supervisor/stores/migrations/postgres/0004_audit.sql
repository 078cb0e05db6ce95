-- The per-tenant hash-chained audit log. Append-only: triggers refuse UPDATE,
-- DELETE and TRUNCATE for every role, including the owner. The chain head
-- (audit_heads) is the per-tenant lock appenders take with SELECT ... FOR UPDATE.
-- hash/mac are computed by the application; the MAC key never enters the database.
CREATE TABLE audit_log (
    tenant_id       text NOT NULL REFERENCES tenants (id),
    seq             bigint NOT NULL CHECK (seq > 0),
    ts              double precision NOT NULL,
    kind            text NOT NULL,
    run_id          text,
    tool            text,
    args_hash       text,
    rule_id         text,
    policy_version  text,
    code            text,
    cost_micro      bigint NOT NULL DEFAULT 0,
    detail          jsonb NOT NULL DEFAULT '{}',
    prev_hash       text NOT NULL,
    hash            text NOT NULL,
    mac             text NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_log_run ON audit_log (tenant_id, run_id, seq) WHERE run_id IS NOT NULL;
SELECT stockade_tenant_rls('audit_log');
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM stockade_app, stockade_system;

CREATE FUNCTION stockade_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION stockade_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION stockade_audit_append_only();

CREATE TABLE audit_heads (
    tenant_id  text PRIMARY KEY REFERENCES tenants (id),
    seq        bigint NOT NULL DEFAULT 0,
    hash       text NOT NULL DEFAULT repeat('0', 64)
);
SELECT stockade_tenant_rls('audit_heads');
