-- Which users belong to which projects. A run (or a key) that carries both a user and a project needs
-- the user to be a member of the project: a key bound to a project can no longer act as any user of
-- its tenant (their storage, their budget), nor a user-bound key charge any project.
CREATE TABLE project_members (
    tenant_id   text NOT NULL REFERENCES tenants (id),
    project_id  text NOT NULL,
    user_id     text NOT NULL,
    added_at    double precision NOT NULL,
    PRIMARY KEY (tenant_id, project_id, user_id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);
CREATE INDEX project_members_user ON project_members (tenant_id, user_id);
SELECT stockade_tenant_rls('project_members');
GRANT SELECT, INSERT, DELETE ON project_members TO stockade_app, stockade_system;

-- What was already in use before memberships existed stays allowed: the pairs of every key bound to
-- both, and of every run that had both (whose user and project still exist). As stockade_system
-- (BYPASSRLS): api_keys and runs force row-level security, and a migrating user that is no superuser
-- would otherwise see no tenant's rows.
SELECT set_config('role', 'stockade_system', true);
INSERT INTO project_members (tenant_id, project_id, user_id, added_at)
SELECT DISTINCT x.tenant_id, x.project_id, x.user_id, extract(epoch FROM now())
  FROM (SELECT tenant_id, project_id, user_id FROM api_keys
         WHERE user_id IS NOT NULL AND project_id IS NOT NULL
        UNION
        SELECT tenant_id, project_id, user_id FROM runs
         WHERE user_id IS NOT NULL AND project_id IS NOT NULL) AS x
  JOIN projects p ON p.tenant_id = x.tenant_id AND p.id = x.project_id
  JOIN users u ON u.tenant_id = x.tenant_id AND u.id = x.user_id
ON CONFLICT DO NOTHING;
RESET ROLE;
