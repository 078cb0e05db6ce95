-- Knowledge base documents. SQLite has no row-level security: the adapter filters by tenant_id.
-- The full-text index is one FTS5 table per tenant (created on first use by SqliteKbStore,
-- named kb_fts_<hash of tenant id>) over this table as external content, so bm25's corpus
-- statistics never mix tenants. The explicit INTEGER PRIMARY KEY keeps rowids stable across
-- VACUUM, which the external-content index relies on.
CREATE TABLE kb_docs (
    id          INTEGER PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    doc_id      TEXT NOT NULL,
    title       TEXT,
    source      TEXT,
    body        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    UNIQUE (tenant_id, doc_id)
) STRICT;
