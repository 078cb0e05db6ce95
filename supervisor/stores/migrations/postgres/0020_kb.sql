-- Knowledge base documents with a weighted full-text vector (title A, body B), English config.
-- ts_rank uses only the document itself (no corpus statistics), so one table serves all
-- tenants without one tenant's documents influencing another's scores.
CREATE TABLE kb_docs (
    tenant_id   text NOT NULL REFERENCES tenants (id),
    doc_id      text NOT NULL,
    title       text,
    source      text,
    body        text NOT NULL,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    tsv         tsvector GENERATED ALWAYS AS (
                    setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') ||
                    setweight(to_tsvector('english'::regconfig, body), 'B')
                ) STORED,
    PRIMARY KEY (tenant_id, doc_id)
);
CREATE INDEX kb_docs_tsv ON kb_docs USING gin (tsv);
SELECT stockade_tenant_rls('kb_docs');
-- Default privileges (0001) already grant DML on new tables to both roles; stated again so the
-- table stays usable if it is ever recreated by another owner.
GRANT SELECT, INSERT, UPDATE, DELETE ON kb_docs TO stockade_app, stockade_system;
