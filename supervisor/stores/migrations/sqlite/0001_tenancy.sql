-- Tenants, projects, users and API keys (only the key hash is stored).
-- SQLite has no row-level security: the adapters filter every query by tenant_id.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL
) STRICT;

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    name        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    UNIQUE (tenant_id, id)
) STRICT;

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    name        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    UNIQUE (tenant_id, id)
) STRICT;

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'member', 'approver', 'viewer')),
    user_id     TEXT,
    project_id  TEXT,
    created_at  REAL NOT NULL,
    revoked_at  REAL,
    -- composite keys: a key can only name a user/project of its own tenant
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
) STRICT;
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);
