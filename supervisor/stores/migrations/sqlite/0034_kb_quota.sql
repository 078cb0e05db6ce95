-- Per-tenant knowledge-base usage, what the kb quota (STOCKADE_KB_QUOTA_MB / _DOCS) is checked
-- against: the tenant's document count and the UTF-8 bytes of their text (body + title + source,
-- the same sum as supervisor.stores.kb_port.doc_bytes). Triggers on kb_docs keep it, so every
-- write path counts; SqliteKbStore.add checks it inside its BEGIN IMMEDIATE transaction.
CREATE TABLE kb_usage (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants (id),
    docs        INTEGER NOT NULL DEFAULT 0,
    bytes       INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TRIGGER kb_docs_usage_insert AFTER INSERT ON kb_docs BEGIN
    INSERT INTO kb_usage (tenant_id, docs, bytes) VALUES (NEW.tenant_id, 1,
        length(CAST(NEW.body AS BLOB)) + coalesce(length(CAST(NEW.title AS BLOB)), 0)
        + coalesce(length(CAST(NEW.source AS BLOB)), 0))
    ON CONFLICT (tenant_id) DO UPDATE SET docs = docs + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER kb_docs_usage_update AFTER UPDATE OF tenant_id, title, source, body ON kb_docs BEGIN
    SELECT RAISE(ABORT, 'a knowledge-base document cannot move to another tenant')
    WHERE NEW.tenant_id IS NOT OLD.tenant_id;
    UPDATE kb_usage SET bytes = bytes
        - (length(CAST(OLD.body AS BLOB)) + coalesce(length(CAST(OLD.title AS BLOB)), 0)
           + coalesce(length(CAST(OLD.source AS BLOB)), 0))
        + (length(CAST(NEW.body AS BLOB)) + coalesce(length(CAST(NEW.title AS BLOB)), 0)
           + coalesce(length(CAST(NEW.source AS BLOB)), 0))
    WHERE tenant_id = NEW.tenant_id;
END;

CREATE TRIGGER kb_docs_usage_delete AFTER DELETE ON kb_docs BEGIN
    UPDATE kb_usage SET docs = docs - 1, bytes = bytes
        - (length(CAST(OLD.body AS BLOB)) + coalesce(length(CAST(OLD.title AS BLOB)), 0)
           + coalesce(length(CAST(OLD.source AS BLOB)), 0))
    WHERE tenant_id = OLD.tenant_id;
END;

-- Documents stored before this migration.
INSERT INTO kb_usage (tenant_id, docs, bytes)
SELECT tenant_id, count(*), sum(length(CAST(body AS BLOB)) + coalesce(length(CAST(title AS BLOB)), 0)
                                + coalesce(length(CAST(source AS BLOB)), 0))
FROM kb_docs GROUP BY tenant_id;
