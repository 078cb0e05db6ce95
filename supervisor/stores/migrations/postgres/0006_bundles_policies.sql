-- Immutable bundle versions (tenant_id NULL = platform bundle) and policy history.
-- ``touched`` orders "latest": re-registering an earlier digest (a folder put back, a re-push)
-- makes that version current again without rewriting it.
CREATE SEQUENCE bundle_touch;
CREATE TABLE bundle_versions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- registration order ("latest")
    tenant_id   text REFERENCES tenants (id),
    name        text NOT NULL,
    version     text NOT NULL,
    digest      text NOT NULL,
    manifest    jsonb NOT NULL,
    created_at  double precision NOT NULL,
    touched     bigint NOT NULL DEFAULT nextval('bundle_touch')
);
-- NULL tenant_id (platform) must collide with itself, hence the coalesce.
CREATE UNIQUE INDEX bundle_versions_digest ON bundle_versions ((coalesce(tenant_id, '')), name, digest);
CREATE INDEX bundle_versions_latest ON bundle_versions ((coalesce(tenant_id, '')), name, touched DESC);
-- Tenants read their own and platform bundles, and write only their own;
-- platform bundles are registered through system transactions.
ALTER TABLE bundle_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE bundle_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY platform_read ON bundle_versions FOR SELECT
    USING (tenant_id IS NULL);
CREATE POLICY tenant_isolation ON bundle_versions
    USING (tenant_id = current_setting('stockade.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('stockade.tenant_id', true));

CREATE TABLE policies (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    version     text NOT NULL,
    yaml_text   text NOT NULL,
    created_at  double precision NOT NULL
);
CREATE INDEX policies_tenant ON policies (tenant_id, id DESC);
SELECT stockade_tenant_rls('policies');
