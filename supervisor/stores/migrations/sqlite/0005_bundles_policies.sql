-- Immutable bundle versions (tenant_id NULL = platform bundle) and policy history.
CREATE TABLE bundle_versions (
    id          INTEGER PRIMARY KEY,  -- registration order ("latest")
    tenant_id   TEXT REFERENCES tenants (id),
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    digest      TEXT NOT NULL,
    manifest    TEXT NOT NULL,  -- JSON
    created_at  REAL NOT NULL,
    touched     INTEGER NOT NULL  -- orders "latest": re-registering an earlier digest makes it current again
) STRICT;
-- NULL tenant_id (platform) must collide with itself, hence the coalesce.
CREATE UNIQUE INDEX bundle_versions_digest ON bundle_versions (coalesce(tenant_id, ''), name, digest);
CREATE INDEX bundle_versions_latest ON bundle_versions (coalesce(tenant_id, ''), name, touched DESC);

CREATE TABLE policies (
    id          INTEGER PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    version     TEXT NOT NULL,
    yaml_text   TEXT NOT NULL,
    created_at  REAL NOT NULL
) STRICT;
CREATE INDEX policies_tenant ON policies (tenant_id, id DESC);
