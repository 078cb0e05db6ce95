-- Knowledge-base search folds accents, as SQLite's FTS5 does (tokenizer `unicode61
-- remove_diacritics 2`): `cafe` finds `café` and `café` finds `cafe`. It did not here: kb_docs.tsv
-- was to_tsvector('english', ...), which keeps diacritics.
--
-- * stockade_kb_fold(text): the text less its combining diacritical marks (decomposed, stripped,
--   recomposed: `é` -> `e`, Hangul and the rest unchanged), built-in functions only. The generated
--   tsv is built on it, queries go through its twin PgKbStore._unmarked: matching folds what
--   SQLite's tokenizer folds, no more, on every deployment (no extension or privilege needed).
--   Not `unaccent` for matching: it also folds `ｆｏｘ` -> `fox`, `ﬁ` -> `fi`, `Æ` -> `AE`, `ß` -> `ss`,
--   which FTS5 keeps apart, and the two stores must find the same documents.
-- * stockade_kb_headline: `english` whose non-ASCII word tokens go through the `unaccent`
--   dictionary first (the PostgreSQL manual's recipe), for ts_headline only: it re-parses the
--   stored, accented body, and marks `café` for the query `cafe` only if `café` reads as `cafe`.
--   unaccent is a trusted extension (PostgreSQL 13+): a superuser or a user with CREATE on the
--   database may create it. A migrating user that may not (or a server without the contrib
--   modules) gets a plain copy of `english` and a WARNING: search is the same, only snippets do not
--   mark accented words found by an unaccented query. supervisor/README.md says how to add it later.
--
-- Also: documents stored before kb_port.normalize_doc (NFD `café`, as macOS input sends it) are
-- normalised to NFC, as the code stores them now; the kb_usage trigger (0034) fires on UPDATE OF
-- title, source, body, so each tenant's usage follows the new byte lengths.

-- The app's own lock order (PgKbStore: the tenant's kb_usage row, then the document): a writer
-- holding a usage row finishes first, and the trigger's usage updates below cannot deadlock it.
LOCK TABLE kb_usage IN EXCLUSIVE MODE;
LOCK TABLE kb_docs IN ACCESS EXCLUSIVE MODE;

DO $mig$
DECLARE
    utf8 boolean := current_setting('server_encoding') = 'UTF8';
    nsp  text;
BEGIN
    -- normalize() exists for UTF-8 databases only; elsewhere there is nothing to decompose
    IF utf8 THEN
        CREATE FUNCTION stockade_kb_fold(p text) RETURNS text
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $f$
            SELECT normalize(regexp_replace(normalize(p, NFD),
                '[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]', '', 'g'), NFC)
        $f$;
    ELSE
        CREATE FUNCTION stockade_kb_fold(p text) RETURNS text
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $f$ SELECT p $f$;
    END IF;

    CREATE TEXT SEARCH CONFIGURATION stockade_kb_headline (COPY = english);
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'unaccent') THEN
        BEGIN
            CREATE EXTENSION unaccent;
        EXCEPTION WHEN insufficient_privilege OR undefined_file OR undefined_object THEN
            RAISE WARNING 'knowledge-base snippets will not mark accented words found unaccented: the '
                'unaccent extension could not be created (%); a superuser can run CREATE EXTENSION unaccent '
                'and the steps in supervisor/README.md', SQLERRM;
        END;
    END IF;
    SELECT n.nspname INTO nsp FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'unaccent';
    IF nsp IS NOT NULL THEN
        EXECUTE format('ALTER TEXT SEARCH CONFIGURATION stockade_kb_headline'
                       ' ALTER MAPPING FOR hword, hword_part, word WITH %I.unaccent, english_stem', nsp);
    END IF;
END
$mig$;
GRANT EXECUTE ON FUNCTION stockade_kb_fold(text) TO stockade_app, stockade_system;

-- The old column (and its GIN index) goes first, so the normalising UPDATE does not compute it.
ALTER TABLE kb_docs DROP COLUMN tsv;

-- As stockade_system (BYPASSRLS): kb_docs forces row-level security, and a migrating user that is
-- no superuser would otherwise update no tenant's documents (as in 0034).
SELECT set_config('role', 'stockade_system', true);
DO $mig$
BEGIN
    IF current_setting('server_encoding') = 'UTF8' THEN
        UPDATE kb_docs
        SET body = normalize(body, NFC), title = normalize(title, NFC), source = normalize(source, NFC)
        WHERE body IS NOT NFC NORMALIZED
           OR NOT coalesce(title IS NFC NORMALIZED, true)
           OR NOT coalesce(source IS NFC NORMALIZED, true);
    END IF;
END
$mig$;
RESET ROLE;

-- As in 0020, on the folded text (a generated column needs an IMMUTABLE expression: stockade_kb_fold is).
ALTER TABLE kb_docs ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english'::regconfig, stockade_kb_fold(coalesce(title, ''))), 'A') ||
    setweight(to_tsvector('english'::regconfig, stockade_kb_fold(body)), 'B')
) STORED;
CREATE INDEX kb_docs_tsv ON kb_docs USING gin (tsv);
