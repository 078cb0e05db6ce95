"""Attacks on the knowledge-base quota (stores/kb_port.py KbQuota, the kb_usage counter and its triggers).

Several real processes (each with its own connections) race random adds, growing and shrinking replaces
of shared ids and deletes against one tenant: at every moment any of them looks, what is really stored
stays within the quota, no writer ever hits a deadlock, and at the end the counter equals the real sum
over ``kb_docs`` on both adapters. Text the SQL byte count could read differently from Python's
``doc_bytes`` (4-byte emoji, combining marks, BOM, noncharacters, lone surrogates) and row-level
security on the counter row are attacked too.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from supervisor.errors import StockadeError
from supervisor.stores.kb_port import KbQuota, KbStore, KbUsage, doc_bytes

pytestmark = pytest.mark.timeout(120)

# one- to four-byte characters, combining marks, a ZWJ sequence, BOM, U+FFFF, the last code point
_ALPHABET = ["a", "b", " ", "é", "e\u0301", "€", "中", "😀", "👩\u200d👩\u200d👧", "\ufeff", "\uffff", "\U0010ffff",
             "\u05d0", "\u0627\u0644"]


def _store(kind: str, db: Any, quota: KbQuota | None = None) -> KbStore:
    if kind == "postgres":
        from supervisor.stores.postgres.kb import PgKbStore

        return PgKbStore(db, quota)
    from supervisor.stores.sqlite.kb import SqliteKbStore

    return SqliteKbStore(db, quota)


async def _stored(kind: str, db: Any, tenant: str) -> tuple[KbUsage, KbUsage]:
    """(the real documents and Python UTF-8 bytes, the same in SQL's own count), in one snapshot."""
    if kind == "postgres":
        async with db.system_tx() as c:
            rows = await c.fetch("SELECT title, source, body, stockade_kb_doc_bytes(title, source, body) AS n"
                                 " FROM kb_docs WHERE tenant_id = $1", tenant)
    else:
        rows = db.query("SELECT title, source, body, length(CAST(body AS BLOB)) + coalesce(length(CAST(title AS BLOB)),"
                        " 0) + coalesce(length(CAST(source AS BLOB)), 0) AS n FROM kb_docs WHERE tenant_id = ?",
                        (tenant,))
    py = sum(doc_bytes(r["body"], r["title"], r["source"]) for r in rows)
    return KbUsage(len(rows), py), KbUsage(len(rows), sum(int(r["n"]) for r in rows))


def _text(rng: random.Random, n: int) -> str:
    return "w" + "".join(rng.choice(_ALPHABET) for _ in range(n))


async def _hammer(kind: str, where: Any, tenant: str, quota: KbQuota, seed: int, ops: int, barrier: Any) -> dict:
    from supervisor.stores.postgres.db import open_postgres
    from supervisor.stores.sqlite.db import open_sqlite

    db = await (open_sqlite(Path(where), migrate=False) if kind == "sqlite"
                else open_postgres(where, min_size=1, max_size=3, migrate=False))
    kb = _store(kind, db, quota)
    rng = random.Random(seed)
    out: dict[str, Any] = {"ok": 0, "refused": 0, "errors": [], "over": []}

    async def one(i: int) -> None:
        shared = f"d{rng.randrange(6)}"
        roll = rng.random()
        try:
            if roll < 0.4:
                await kb.add(tenant, _text(rng, rng.randrange(1, 120)), title=rng.choice([None, _text(rng, 5)]),
                             source=rng.choice([None, "https://x.example/é"]))
            elif roll < 0.85:  # the same few ids, growing and shrinking, from every process at once
                await kb.add(tenant, _text(rng, rng.randrange(1, 300)), doc_id=shared)
            else:
                await kb.delete(tenant, shared)
            out["ok"] += 1
        except StockadeError as exc:
            if exc.code != "kb.quota":
                out["errors"].append(repr(exc))
            out["refused"] += 1
        except Exception as exc:  # a deadlock, a serialization failure, an encoding error: all bugs
            out["errors"].append(repr(exc))
        real, _ = await _stored(kind, db, tenant)
        if real.docs > quota.max_docs or real.bytes > quota.max_bytes:
            out["over"].append(real)

    try:
        await asyncio.to_thread(barrier.wait, 60)
        if kind == "postgres":  # several transactions in flight per process, too
            for i in range(0, ops, 3):
                await asyncio.gather(*(one(i + j) for j in range(3)))
        else:
            for i in range(ops):
                await one(i)
    finally:
        await db.close()
    return out


def _hammer_process(kind: str, where: Any, tenant: str, quota: KbQuota, seed: int, ops: int, barrier: Any,
                    results: Any) -> None:
    try:
        results.put(asyncio.run(_hammer(kind, where, tenant, quota, seed, ops, barrier)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put({"crash": repr(exc)})


async def test_processes_racing_adds_replaces_and_deletes_never_pass_the_quota_and_the_counter_stays_exact(
        sql_db):
    kb = _store(sql_db.kind, sql_db.db)
    t = await sql_db.new_tenant()
    other = await sql_db.new_tenant()
    await kb.add(other, "a neighbour's document, never counted for t", doc_id="d0")
    quota = KbQuota(max_bytes=6000, max_docs=12)
    where = str(sql_db.path) if sql_db.kind == "sqlite" else sql_db.url
    ctx = multiprocessing.get_context("spawn")
    procs, barrier, results = 4, ctx.Barrier(4), ctx.Queue()
    workers = [ctx.Process(target=_hammer_process, args=(sql_db.kind, where, t, quota, seed, 45, barrier, results))
               for seed in range(procs)]
    for w in workers:
        w.start()
    try:
        outs = [await asyncio.to_thread(results.get, True, 100) for _ in workers]
    finally:
        for w in workers:
            await asyncio.to_thread(w.join, 10)
            if w.is_alive():
                w.kill()
    assert not [o for o in outs if "crash" in o], outs
    assert [e for o in outs for e in o["errors"]] == []
    assert [x for o in outs for x in o["over"]] == []
    assert sum(o["refused"] for o in outs) > 0, "the workload never reached the quota"
    real, sql_count = await _stored(sql_db.kind, sql_db.db, t)
    assert await kb.usage(t) == real == sql_count
    assert real.docs <= quota.max_docs and real.bytes <= quota.max_bytes
    assert await kb.usage(other) == (await _stored(sql_db.kind, sql_db.db, other))[0]


async def test_multibyte_text_counts_the_same_in_python_and_in_sql_and_fills_the_quota_exactly(sql_db):
    t = await sql_db.new_tenant()
    texts = ["😀" * 7, "e\u0301" * 5, "👩\u200d👩\u200d👧", "\ufeffbom", "\uffff\U0010ffff", "中文", "a\u0627\u0644"]
    title, source = "Ünï😀", "https://ex.example/€"
    total = sum(doc_bytes(x, title, source) for x in texts)
    kb = _store(sql_db.kind, sql_db.db, KbQuota(max_bytes=total, max_docs=100))
    for i, x in enumerate(texts):
        await kb.add(t, x, title=title, source=source, doc_id=f"u{i}")
    real, sql_count = await _stored(sql_db.kind, sql_db.db, t)
    assert await kb.usage(t) == KbUsage(len(texts), total) == real == sql_count  # exactly at the limit
    with pytest.raises(StockadeError) as ei:  # one more byte, as a 4-byte character, is refused
        await kb.add(t, texts[0] + "😀", title=title, source=source, doc_id="u0")
    assert ei.value.code == "kb.quota"
    await kb.add(t, "😀" * 6 + "abcd", title=title, source=source, doc_id="u0")  # same byte size: accepted
    assert await kb.usage(t) == KbUsage(len(texts), total) == (await _stored(sql_db.kind, sql_db.db, t))[0]


@pytest.mark.parametrize("field", ["text", "title", "source"])
@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", "\ud83d\ude00"])  # lone halves, and a pair as two code units
async def test_lone_surrogates_are_input_invalid_and_store_nothing(sql_db, field, bad):
    """JSON ``"\\ud800"`` decodes to a lone surrogate; doc_bytes counts it (surrogatepass) but it has no
    UTF-8 form, so neither adapter can store it: the same ``input.invalid`` from both (SQLite raised
    UnicodeEncodeError from the driver; PostgreSQL's search leaked a raw asyncpg DataError)."""
    kb = _store(sql_db.kind, sql_db.db, KbQuota(max_bytes=1000, max_docs=10))
    t = await sql_db.new_tenant()
    await kb.add(t, "kept", doc_id="d")
    doc = {"text": "body", "title": None, "source": None, field: bad}
    with pytest.raises(StockadeError) as ei:
        await kb.add(t, doc["text"], title=doc["title"], source=doc["source"], doc_id="d")
    assert ei.value.code == "input.invalid"
    assert await kb.usage(t) == KbUsage(1, 4) == (await _stored(sql_db.kind, sql_db.db, t))[0]
    assert [h.doc_id for h in await kb.search(t, "kept")] == ["d"]
    with pytest.raises(StockadeError) as ei:  # a query is text the same way
        await kb.search(t, "kept " + bad)
    assert ei.value.code == "input.invalid"


@pytest.mark.pg
async def test_row_level_security_on_the_kb_usage_counter(pg_url):
    from supervisor.stores.postgres import PgTenantStore, open_postgres
    from supervisor.stores.postgres.kb import PgKbStore

    db = await open_postgres(pg_url, min_size=1, max_size=2)
    try:
        tenants = PgTenantStore(db)
        a = (await tenants.create_tenant(f"kbu-a-{id(db)}")).id
        b = (await tenants.create_tenant(f"kbu-b-{id(db)}")).id
        c_ = (await tenants.create_tenant(f"kbu-c-{id(db)}")).id
        kb = PgKbStore(db)
        await kb.add(a, "a's note")
        await kb.add(b, "b's longer note")
        b_usage = await kb.usage(b)
        async with db.tenant_tx(a) as c:
            assert {r[0] for r in await c.fetch("SELECT tenant_id FROM kb_usage")} == {a}  # no WHERE on purpose
            assert await c.execute("UPDATE kb_usage SET bytes = 0, docs = 0 WHERE tenant_id = $1", b) == "UPDATE 0"
            assert await c.execute("DELETE FROM kb_usage WHERE tenant_id = $1", b) == "DELETE 0"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nor move its own row onto another tenant
                await c.execute("UPDATE kb_usage SET tenant_id = $1", c_)
        for sql in ("INSERT INTO kb_usage (tenant_id) VALUES ($1)",
                    "INSERT INTO kb_usage (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO UPDATE SET bytes = 0"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                async with db.tenant_tx(a) as c:
                    await c.execute(sql, c_ if "DO UPDATE" not in sql else b)
        assert await kb.usage(b) == b_usage
        assert await kb.usage(c_) == KbUsage(0, 0)
        async with db.tenant_tx(a) as c:  # a tenant-scoped write of another tenant's document is refused before
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the trigger could count it anywhere
                await c.execute("INSERT INTO kb_docs (tenant_id, doc_id, body, created_at, updated_at)"
                                " VALUES ($1, 'x', 'yyyy', 0, 0)", b)
        assert await kb.usage(b) == b_usage
        async with db.system_tx() as c:
            row = await c.fetchrow("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'kb_usage'")
        assert tuple(row) == (True, True)
    finally:
        await db.close()
