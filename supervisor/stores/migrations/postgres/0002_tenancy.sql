-- Tenants, projects, users and API keys (only the key hash is stored).
CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  double precision NOT NULL
);
-- A tenant transaction sees its own tenant row only.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = current_setting('stockade.tenant_id', true))
    WITH CHECK (id = current_setting('stockade.tenant_id', true));

CREATE TABLE projects (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    name        text NOT NULL,
    created_at  double precision NOT NULL,
    UNIQUE (tenant_id, id)
);
SELECT stockade_tenant_rls('projects');

CREATE TABLE users (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    name        text NOT NULL,
    created_at  double precision NOT NULL,
    UNIQUE (tenant_id, id)
);
SELECT stockade_tenant_rls('users');

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    key_hash    text NOT NULL UNIQUE,
    prefix      text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'member', 'approver', 'viewer')),
    user_id     text,
    project_id  text,
    created_at  double precision NOT NULL,
    revoked_at  double precision,
    -- composite keys: a key can only name a user/project of its own tenant
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);
SELECT stockade_tenant_rls('api_keys');
