-- MCP servers a tenant registered, and the tool definitions pinned for each.
-- headers holds secrets for the MCP server (e.g. Authorization); the API never returns them.
CREATE TABLE mcp_servers (
    tenant_id   text NOT NULL REFERENCES tenants (id),
    name        text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    url         text NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  double precision NOT NULL,
    created_by  text,
    PRIMARY KEY (tenant_id, name)
);
SELECT stockade_tenant_rls('mcp_servers');

CREATE TABLE mcp_tools (
    tenant_id           text NOT NULL,
    server              text NOT NULL,
    name                text NOT NULL,
    definition          jsonb NOT NULL,  -- {name, description, input_schema} as approved
    def_hash            text NOT NULL,   -- sha256 of its canonical JSON
    status              text NOT NULL CHECK (status IN ('approved', 'quarantined')),
    pinned_at           double precision NOT NULL,
    approved_by         text,            -- API key id; NULL for a tool never approved
    pending_definition  jsonb,           -- a changed definition awaiting approval
    pending_hash        text,
    changed_at          double precision,
    PRIMARY KEY (tenant_id, server, name),
    FOREIGN KEY (tenant_id, server) REFERENCES mcp_servers (tenant_id, name) ON DELETE CASCADE,
    CHECK (status = 'approved' OR pending_hash IS NOT NULL)
);
SELECT stockade_tenant_rls('mcp_tools');
