"""KbStore contract: the same behaviour from SQLite FTS5 and PostgreSQL full-text search."""

from __future__ import annotations

import asyncpg
import pytest

from supervisor.errors import StockadeError
from supervisor.stores.kb_port import MAX_LIMIT, KbStore

pytestmark = pytest.mark.timeout(60)


def _store(sql_db) -> KbStore:
    if sql_db.is_pg:
        from supervisor.stores.postgres.kb import PgKbStore

        return PgKbStore(sql_db.db)
    from supervisor.stores.sqlite.kb import SqliteKbStore

    return SqliteKbStore(sql_db.db)


async def _seed(kb: KbStore, tenant: str) -> dict[str, str]:
    ids = {}
    ids["paris"] = await kb.add(tenant, "Paris is the capital and most populous city of France, on the Seine.",
                                title="Paris", source="https://en.wikipedia.org/wiki/Paris")
    ids["berlin"] = await kb.add(tenant, "Berlin is the capital of Germany. Traffic in Berlin is heavy.",
                                 title="Berlin", doc_id="wiki:berlin")
    ids["rivers"] = await kb.add(tenant, "The Seine flows through Paris; the Spree flows through Berlin.",
                                 title="Rivers")
    return ids


async def test_add_and_search_with_snippets_and_ranking(sql_db):
    kb = _store(sql_db)
    t = await sql_db.new_tenant()
    ids = await _seed(kb, t)
    assert ids["berlin"] == "wiki:berlin" and ids["paris"].startswith("doc_")
    hits = await kb.search(t, "What is the capital of France?")
    assert [h.doc_id for h in hits] == [ids["paris"]]
    h = hits[0]
    assert h.title == "Paris" and h.source == "https://en.wikipedia.org/wiki/Paris"
    assert "**capital**" in h.snippet and "**France**" in h.snippet
    assert h.score > 0
    # title matches weigh more: "Berlin" is in Berlin's title and twice in its body
    hits = await kb.search(t, "berlin")
    assert [x.doc_id for x in hits] == [ids["berlin"], ids["rivers"]]
    assert hits[0].score > hits[1].score
    assert len(await kb.search(t, "seine", limit=1)) == 1
    assert await kb.search(t, "flowing rivers") != []  # stemming: flows ~ flowing


@pytest.mark.parametrize("query,expected", [
    ('"capital of germany"', ["berlin"]),
    ("germany or france", ["berlin", "paris"]),
    ("capital -traffic", ["paris"]),
    ("seine spree", ["rivers"]),
    ("the of and", []),
    ("nothingmatcheshere", []),
])
async def test_web_search_syntax(sql_db, query, expected):
    kb = _store(sql_db)
    t = await sql_db.new_tenant()
    ids = await _seed(kb, t)
    got = {h.doc_id for h in await kb.search(t, query)}
    assert got == {ids[k] for k in expected}


HOSTILE = ['"', "'", "*", "NEAR(", "a:b", "title:secret", "^x", "(", ")", "AND", "OR OR", "-", "!", "&|", "\\",
           "' OR 1=1 --", "%", "{a b}", "a AND (b", '"unterminated', "col:*", "   ", "",
           "ﬁle ünïcödé 漢字", "x" * 1000, "-capital", "capital:*"]


@pytest.mark.parametrize("query", HOSTILE)
async def test_query_syntax_from_users_never_escapes(sql_db, query):
    kb = _store(sql_db)
    t = await sql_db.new_tenant()
    await _seed(kb, t)
    hits = await kb.search(t, query)
    assert isinstance(hits, list)


async def test_replace_by_doc_id_and_delete(sql_db):
    kb = _store(sql_db)
    t = await sql_db.new_tenant()
    doc = await kb.add(t, "alpha bravo", doc_id="d1")
    assert await kb.add(t, "charlie delta", title="new", doc_id="d1") == "d1"
    assert await kb.search(t, "alpha") == []
    [hit] = await kb.search(t, "charlie")
    assert hit.doc_id == doc and hit.title == "new"
    assert await kb.delete(t, "d1") is True
    assert await kb.delete(t, "d1") is False
    assert await kb.search(t, "charlie") == []


async def test_tenants_never_see_each_other(sql_db):
    kb = _store(sql_db)
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    await kb.add(a, "the launch code is swordfish", doc_id="shared-id")
    await kb.add(b, "nothing to see", doc_id="shared-id")
    assert await kb.search(b, "swordfish") == []
    assert [h.doc_id for h in await kb.search(a, "swordfish")] == ["shared-id"]
    assert await kb.delete(b, "missing") is False
    assert await kb.delete(b, "shared-id") is True  # b's own document of the same id
    assert [h.doc_id for h in await kb.search(a, "swordfish")] == ["shared-id"]  # a's untouched


async def test_scores_do_not_depend_on_other_tenants_documents(sql_db):
    kb = _store(sql_db)
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    await kb.add(a, "zebra crossing near the station", doc_id="a1")
    await kb.add(a, "a quiet street", doc_id="a2")
    before = [(h.doc_id, h.score) for h in await kb.search(a, "zebra")]
    for i in range(20):
        await kb.add(b, f"zebra zebra number {i}")
    after = [(h.doc_id, h.score) for h in await kb.search(a, "zebra")]
    assert before == after


async def test_unknown_tenant_and_bad_documents(sql_db):
    kb = _store(sql_db)
    t = await sql_db.new_tenant()
    with pytest.raises(StockadeError) as ei:
        await kb.add("ten_does_not_exist", "text")
    assert ei.value.code == "not_found"
    for kwargs, code in (({"text": ""}, "input.invalid"), ({"text": "  "}, "input.invalid"),
                         ({"text": "a\x00b"}, "input.invalid"), ({"text": "ok", "doc_id": "has space"}, "input.invalid"),
                         ({"text": "ok", "doc_id": "x" * 201}, "input.invalid"),
                         ({"text": "x" * 200_001}, "input.too_large")):
        with pytest.raises(StockadeError) as ei:
            await kb.add(t, **kwargs)
        assert ei.value.code == code
    for limit in (0, MAX_LIMIT + 1, True):
        with pytest.raises(StockadeError) as ei:
            await kb.search(t, "x", limit=limit)
        assert ei.value.code == "input.invalid"
    with pytest.raises(StockadeError):
        await kb.search(t, "a\x00b")
    assert await kb.search(t, "text") == []  # nothing was stored by the refused calls


async def test_postgres_row_level_security_on_kb_docs(pg_url):
    from supervisor.stores.postgres import PgTenantStore, open_postgres
    from supervisor.stores.postgres.kb import PgKbStore

    db = await open_postgres(pg_url, min_size=1, max_size=2)
    try:
        kb = PgKbStore(db)
        tenants = PgTenantStore(db)
        a = (await tenants.create_tenant(f"kb-rls-a-{id(db)}")).id
        b = (await tenants.create_tenant(f"kb-rls-b-{id(db)}")).id
        await kb.add(a, "secret of a")
        async with db.tenant_tx(b) as c:
            # a query that forgets its WHERE clause still sees only b's rows
            assert await c.fetchval("SELECT count(*) FROM kb_docs") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # WITH CHECK: b cannot write a's rows
            async with db.tenant_tx(b) as c:
                await c.execute(
                    "INSERT INTO kb_docs (tenant_id, doc_id, body, created_at, updated_at) VALUES ($1, 'x', 'y', 0, 0)", a
                )
        async with db.acquire() as c:
            row = await c.fetchrow("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'kb_docs'")
            assert row["relrowsecurity"] and row["relforcerowsecurity"]
    finally:
        await db.close()


async def test_sqlite_uses_one_index_per_tenant(tmp_path):
    from supervisor.stores.sqlite import SqliteTenantStore, open_sqlite
    from supervisor.stores.sqlite.kb import SqliteKbStore, _fts_table

    db = await open_sqlite(tmp_path / "kb.db")
    try:
        kb = SqliteKbStore(db)
        a = (await SqliteTenantStore(db).create_tenant("a")).id
        b = (await SqliteTenantStore(db).create_tenant("b")).id
        await kb.add(a, "one")
        await kb.add(b, "two")
        names = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE sql LIKE 'CREATE VIRTUAL TABLE%'")}
        assert names == {_fts_table(a), _fts_table(b)}
        assert db.query(f"SELECT rowid FROM {_fts_table(b)} WHERE {_fts_table(b)} MATCH 'one'") == []
    finally:
        await db.close()
