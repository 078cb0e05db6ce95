-- Per-tenant knowledge-base usage, what the kb quota (STOCKADE_KB_QUOTA_MB / _DOCS) is checked
-- against: the tenant's document count and the UTF-8 bytes of their text (body + title + source).
-- A trigger on kb_docs keeps it, so every write path counts, not only PgKbStore's.
-- Lock order (deadlock freedom, FACTS.md): a writer of kb_docs locks the tenant's kb_usage row
-- first (PgKbStore.add / delete), then the document row; the trigger's update of kb_usage then
-- re-locks a row the transaction already holds.
CREATE TABLE kb_usage (
    tenant_id   text PRIMARY KEY REFERENCES tenants (id),
    docs        bigint NOT NULL DEFAULT 0,
    bytes       bigint NOT NULL DEFAULT 0
);
SELECT stockade_tenant_rls('kb_usage');
GRANT SELECT, INSERT, UPDATE, DELETE ON kb_usage TO stockade_app, stockade_system;

-- The same sum as supervisor.stores.kb_port.doc_bytes (the database encoding is UTF-8).
CREATE FUNCTION stockade_kb_doc_bytes(p_title text, p_source text, p_body text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT octet_length(p_body)::bigint + coalesce(octet_length(p_title), 0) + coalesce(octet_length(p_source), 0)
$$;

CREATE FUNCTION stockade_kb_usage_track() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    t       text;
    d_docs  bigint := 0;
    d_bytes bigint := 0;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
        RAISE EXCEPTION 'a knowledge-base document cannot move to another tenant';
    END IF;
    IF TG_OP <> 'INSERT' THEN
        t := OLD.tenant_id;
        d_docs := -1;
        d_bytes := -stockade_kb_doc_bytes(OLD.title, OLD.source, OLD.body);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        t := NEW.tenant_id;
        d_docs := d_docs + 1;
        d_bytes := d_bytes + stockade_kb_doc_bytes(NEW.title, NEW.source, NEW.body);
    END IF;
    INSERT INTO kb_usage AS u (tenant_id, docs, bytes) VALUES (t, d_docs, d_bytes)
    ON CONFLICT (tenant_id) DO UPDATE SET docs = u.docs + EXCLUDED.docs, bytes = u.bytes + EXCLUDED.bytes;
    RETURN NULL;
END
$$;

CREATE TRIGGER kb_docs_usage AFTER INSERT OR DELETE OR UPDATE OF tenant_id, title, source, body ON kb_docs
    FOR EACH ROW EXECUTE FUNCTION stockade_kb_usage_track();

-- Documents stored before this migration. The trigger's lock on kb_docs keeps writers out until
-- this commits. As stockade_system (BYPASSRLS): kb_docs forces row-level security, and a migrating
-- user that is no superuser would otherwise count no tenant's documents.
SELECT set_config('role', 'stockade_system', true);
INSERT INTO kb_usage (tenant_id, docs, bytes)
SELECT tenant_id, count(*), sum(stockade_kb_doc_bytes(title, source, body)) FROM kb_docs GROUP BY tenant_id;
RESET ROLE;
