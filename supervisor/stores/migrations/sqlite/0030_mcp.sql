-- MCP servers a tenant registered, and the tool definitions pinned for each.
-- headers holds secrets for the MCP server (e.g. Authorization); the API never returns them.
CREATE TABLE mcp_servers (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    name        TEXT NOT NULL,
    url         TEXT NOT NULL,
    headers     TEXT NOT NULL DEFAULT '{}',  -- JSON object
    created_at  REAL NOT NULL,
    created_by  TEXT,
    PRIMARY KEY (tenant_id, name)
) STRICT;

CREATE TABLE mcp_tools (
    tenant_id           TEXT NOT NULL,
    server              TEXT NOT NULL,
    name                TEXT NOT NULL,
    definition          TEXT NOT NULL,  -- JSON {name, description, input_schema} as approved
    def_hash            TEXT NOT NULL,  -- sha256 of its canonical JSON
    status              TEXT NOT NULL CHECK (status IN ('approved', 'quarantined')),
    pinned_at           REAL NOT NULL,
    approved_by         TEXT,           -- API key id; NULL for a tool never approved
    pending_definition  TEXT,           -- JSON: a changed definition awaiting approval
    pending_hash        TEXT,
    changed_at          REAL,
    PRIMARY KEY (tenant_id, server, name),
    FOREIGN KEY (tenant_id, server) REFERENCES mcp_servers (tenant_id, name) ON DELETE CASCADE,
    CHECK (status = 'approved' OR pending_hash IS NOT NULL)
) STRICT;
