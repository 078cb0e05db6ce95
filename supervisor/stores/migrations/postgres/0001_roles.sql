-- Roles, default privileges and the RLS helper every tenant-scoped table uses.
--
-- stockade_app    : what tenant transactions run as (db.tenant_tx); subject to RLS.
-- stockade_system : cross-tenant work (key lookup, sweeps); BYPASSRLS.
-- Both are NOLOGIN: the service logs in as its own user and switches role per
-- transaction with set_config('role', ..., true). Roles are cluster-wide, so
-- creating them tolerates "already exists" (and a concurrent creator).
DO $$
BEGIN
    BEGIN
        CREATE ROLE stockade_app NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        CREATE ROLE stockade_system NOLOGIN BYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    -- A non-superuser login role must be a member to SET ROLE; superusers need nothing.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT stockade_app, stockade_system TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO stockade_app, stockade_system;

-- Every table and sequence later migrations create (as this login user) is
-- usable by both roles; RLS, not grants, is what separates tenants.
ALTER DEFAULT PRIVILEGES GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO stockade_app, stockade_system;
ALTER DEFAULT PRIVILEGES GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO stockade_app, stockade_system;

-- SELECT stockade_tenant_rls('my_table');  -- ENABLE + FORCE RLS and the tenant policy.
-- Use it for every table with a tenant_id column (ledger, knowledge base, ...).
CREATE OR REPLACE FUNCTION stockade_tenant_rls(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s'
        ' USING (tenant_id = current_setting(''stockade.tenant_id'', true))'
        ' WITH CHECK (tenant_id = current_setting(''stockade.tenant_id'', true))', tbl);
END
$$;
