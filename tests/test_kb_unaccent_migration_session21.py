"""Migration 0046 (PostgreSQL): kb search folds accents as SQLite's FTS5 does, and documents stored NFD
before kb_port.normalize_doc are normalised to NFC, kb_usage following their new byte lengths.

Documents are written as the old schema and the old code left them (up to 0045, raw NFD text), then the
database is migrated. The migrating user need not be a superuser nor may create extensions: without the
``unaccent`` dictionary search still folds accents (``stockade_kb_fold``), only snippets do not mark them.
SQLite needs no migration: its tokenizer folds NFD text as it folds accents; what it stored counts as stored.
"""

from __future__ import annotations

import secrets
import unicodedata
from urllib.parse import urlsplit

import asyncpg
import pytest

from supervisor.stores.kb_port import KbUsage
from supervisor.stores.migrations.runner import migrate_postgres
from tests._migrations import as_user, migration_set

pytestmark = pytest.mark.timeout(120)

CAFE_NFC, CAFE_NFD = "caf\u00e9", "cafe\u0301"
# doc_id -> (title, source, body) as the old code stored them: NFD where the client sent NFD
OLD_DOCS = {
    "nfd": (f"The {CAFE_NFD}", f"https://example.com/{CAFE_NFD}", f"Meet me at the {CAFE_NFD} downtown."),
    "nfc": (None, None, f"the {CAFE_NFC} on the corner"),
    "plain": ("Plain", None, "a cafe near the station"),
    "naive": (None, "notes", "a nai\u0308ve approach"),
    "aero": (None, None, "the island of \u00c6r\u00f8"),
}
FOUND = {  # query -> the documents it finds, on both stacks
    "cafe": ["nfc", "nfd", "plain"], CAFE_NFC: ["nfc", "nfd", "plain"], CAFE_NFD: ["nfc", "nfd", "plain"],
    "CAFÉ": ["nfc", "nfd", "plain"], "naive": ["naive"], "na\u00efve": ["naive"], "nai\u0308ve": ["naive"],
    "\u00c6r\u00f8": ["aero"], "downtown": ["nfd"], "-cafe": [],
}
_ROLES = """DO $$ BEGIN
    BEGIN CREATE ROLE stockade_app NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
    BEGIN CREATE ROLE stockade_system NOLOGIN BYPASSRLS; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
END $$;"""


def _nbytes(*values: str | None) -> int:
    return sum(len(v.encode()) for v in values if v is not None)


def _nfc(value: str | None) -> str | None:
    return None if value is None else unicodedata.normalize("NFC", value)


async def _old_rows(admin: asyncpg.Connection) -> tuple[str, str]:
    """Two tenants' documents written as the old code did (the superuser passes row-level security)."""
    for tid in ("ten_a", "ten_b"):
        await admin.execute("INSERT INTO tenants (id, name, created_at) VALUES ($1, $1, 0)", tid)
    for doc_id, (title, source, body) in OLD_DOCS.items():
        await admin.execute("INSERT INTO kb_docs (tenant_id, doc_id, title, source, body, created_at, updated_at)"
                            " VALUES ('ten_a', $1, $2, $3, $4, 1, 2)", doc_id, title, source, body)
    await admin.execute("INSERT INTO kb_docs (tenant_id, doc_id, body, created_at, updated_at)"
                        " VALUES ('ten_b', 'only', $1, 1, 2)", f"{CAFE_NFD} {CAFE_NFD}")
    old = sum(_nbytes(*doc) for doc in OLD_DOCS.values())
    assert await admin.fetchval("SELECT bytes FROM kb_usage WHERE tenant_id = 'ten_a'") == old  # NFD counted
    return "ten_a", "ten_b"


async def _check_after(admin: asyncpg.Connection, url: str, *, marks: bool) -> None:
    from supervisor.stores.postgres import open_postgres
    from supervisor.stores.postgres.kb import PgKbStore

    rows = await admin.fetch("SELECT tenant_id, doc_id, title, source, body, created_at, updated_at FROM kb_docs")
    for r in rows:  # NFC now, nothing else changed
        if r["tenant_id"] == "ten_a":
            assert (r["title"], r["source"], r["body"]) == tuple(_nfc(v) for v in OLD_DOCS[r["doc_id"]]), r
        assert (r["created_at"], r["updated_at"]) == (1, 2)
    usage = {r["tenant_id"]: (r["docs"], r["bytes"]) for r in await admin.fetch("SELECT * FROM kb_usage")}
    summed = {r["tenant_id"]: (r["n"], r["b"]) for r in await admin.fetch(
        "SELECT tenant_id, count(*) AS n, sum(stockade_kb_doc_bytes(title, source, body)) AS b FROM kb_docs"
        " GROUP BY tenant_id")}
    assert usage == summed == {"ten_a": (5, sum(_nbytes(*map(_nfc, d)) for d in OLD_DOCS.values())),
                               "ten_b": (1, _nbytes(f"{CAFE_NFC} {CAFE_NFC}"))}
    db = await open_postgres(url, min_size=1, max_size=2, migrate=False)  # the app's roles, under RLS
    try:
        kb = PgKbStore(db)
        for query, expected in FOUND.items():
            assert sorted(h.doc_id for h in await kb.search("ten_a", query, limit=10)) == expected, query
        assert [h.doc_id for h in await kb.search("ten_b", "cafe")] == ["only"]
        [hit] = await kb.search("ten_a", "downtown")
        assert hit.title == f"The {CAFE_NFC}" and hit.source == f"https://example.com/{CAFE_NFC}"
        await _check_snippet(url, marks=marks)
        # written after the migration: found by either spelling, counted as stored
        await kb.add("ten_a", f"an {CAFE_NFD} au lait", doc_id="new")
        assert "new" in {h.doc_id for h in await kb.search("ten_a", "cafe", limit=10)}
        assert await kb.usage("ten_a") == KbUsage(6, usage["ten_a"][1] + _nbytes(f"an {CAFE_NFC} au lait"))
    finally:
        await db.close()


async def _check_snippet(url: str, *, marks: bool) -> None:
    from supervisor.stores.postgres import open_postgres
    from supervisor.stores.postgres.kb import PgKbStore

    db = await open_postgres(url, min_size=1, max_size=1, migrate=False)
    try:
        [hit] = await PgKbStore(db).search("ten_a", "naive")
        assert ("**na\u00efve**" in hit.snippet) is marks, hit.snippet
    finally:
        await db.close()


@pytest.mark.pg
async def test_postgres_0046_folds_accents_and_normalises_old_documents(fresh_pg_url, tmp_path):
    await migrate_postgres(fresh_pg_url, migration_set("postgres", tmp_path, below=46, roles_made=False))
    admin = await asyncpg.connect(fresh_pg_url)
    try:
        await _old_rows(admin)
        applied = await migrate_postgres(fresh_pg_url, migration_set("postgres", tmp_path, below=47, roles_made=False))
        assert applied == ["0046_kb_unaccent.sql"]
        assert await admin.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'unaccent'") == 1
        await _check_after(admin, fresh_pg_url, marks=True)
    finally:
        await admin.close()


@pytest.mark.pg
@pytest.mark.parametrize("may_create", [False, True], ids=["no-create-on-database", "create-on-database"])
async def test_postgres_0046_as_a_migrator_that_is_no_superuser(fresh_pg_url, tmp_path, may_create):
    """A migrator with CREATE on the database makes the trusted extension itself; one without it still gets
    accent-folding search (the extension would only mark accented words in snippets)."""
    role = f"kbmig_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(fresh_pg_url)
    try:
        await admin.execute(_ROLES)
        await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        await admin.execute(f"GRANT stockade_app, stockade_system TO {role} WITH ADMIN OPTION")
        await admin.execute(f"ALTER SCHEMA public OWNER TO {role}")
        if may_create:
            await admin.execute(f'GRANT CREATE ON DATABASE "{urlsplit(fresh_pg_url).path[1:]}" TO {role}')
        mine = as_user(fresh_pg_url, role)
        await migrate_postgres(mine, migration_set("postgres", tmp_path, below=46, roles_made=True))
        await _old_rows(admin)
        assert await migrate_postgres(mine, migration_set("postgres", tmp_path, below=47, roles_made=True)) == [
            "0046_kb_unaccent.sql"]
        assert await admin.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'unaccent'") == int(may_create)
        await _check_after(admin, mine, marks=may_create)
        if not may_create:  # supervisor/README.md: what a superuser runs later, and snippets mark them
            await admin.execute("CREATE EXTENSION unaccent; ALTER TEXT SEARCH CONFIGURATION stockade_kb_headline "
                                "ALTER MAPPING FOR hword, hword_part, word WITH unaccent, english_stem;")
            await _check_snippet(mine, marks=True)
    finally:
        await admin.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_sqlite_finds_and_counts_documents_the_old_code_stored_nfd(tmp_path, monkeypatch):
    """No SQLite migration: FTS5 (``remove_diacritics 2``) indexed the NFD text as the same words, and
    kb_usage counted the bytes stored; a replace stores NFC and the triggers count the difference."""
    import supervisor.stores.sqlite.kb as sqlite_kb
    from supervisor.stores.sqlite import SqliteTenantStore, open_sqlite

    db = await open_sqlite(tmp_path / "kb.db")
    try:
        kb = sqlite_kb.SqliteKbStore(db)
        tid = (await SqliteTenantStore(db).create_tenant("a")).id
        with monkeypatch.context() as m:  # the old code: stored as given
            m.setattr(sqlite_kb, "normalize_doc", lambda text, title, source: (text, title, source))
            for doc_id, (title, source, body) in OLD_DOCS.items():
                await kb.add(tid, body, title=title, source=source, doc_id=doc_id)
        assert db.query_one("SELECT body FROM kb_docs WHERE doc_id = 'nfd'")["body"] == OLD_DOCS["nfd"][2]
        old = sum(_nbytes(*doc) for doc in OLD_DOCS.values())
        assert await kb.usage(tid) == KbUsage(5, old)
        for query, expected in FOUND.items():
            assert sorted(h.doc_id for h in await kb.search(tid, query, limit=10)) == expected, query
        title, source, body = OLD_DOCS["nfd"]
        await kb.add(tid, body, title=title, source=source, doc_id="nfd")  # now stored NFC
        assert await kb.usage(tid) == KbUsage(5, old - _nbytes(title, source, body) + _nbytes(
            *map(_nfc, (title, source, body))))
        assert sorted(h.doc_id for h in await kb.search(tid, "cafe", limit=10)) == FOUND["cafe"]
    finally:
        await db.close()
