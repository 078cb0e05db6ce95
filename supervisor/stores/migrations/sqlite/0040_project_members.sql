-- Which users belong to which projects (see the PostgreSQL migration of the same number).
CREATE TABLE project_members (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    project_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    added_at    REAL NOT NULL,
    PRIMARY KEY (tenant_id, project_id, user_id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
) STRICT, WITHOUT ROWID;
CREATE INDEX project_members_user ON project_members (tenant_id, user_id);

-- What was already in use before memberships existed stays allowed: the pairs of every key bound to
-- both, and of every run that had both (whose user and project still exist).
INSERT OR IGNORE INTO project_members (tenant_id, project_id, user_id, added_at)
SELECT x.tenant_id, x.project_id, x.user_id, unixepoch('now')
  FROM (SELECT tenant_id, project_id, user_id FROM api_keys
         WHERE user_id IS NOT NULL AND project_id IS NOT NULL
        UNION
        SELECT tenant_id, project_id, user_id FROM runs
         WHERE user_id IS NOT NULL AND project_id IS NOT NULL) AS x
  JOIN projects p ON p.tenant_id = x.tenant_id AND p.id = x.project_id
  JOIN users u ON u.tenant_id = x.tenant_id AND u.id = x.user_id;
