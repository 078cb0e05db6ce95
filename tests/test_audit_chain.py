"""The audit chain verifier: changed, deleted, inserted, reordered and forged records are all named."""

from __future__ import annotations

import dataclasses

import pytest

from supervisor.audit.chain import GENESIS, Sealer, verify_chain
from supervisor.errors import StockadeError
from supervisor.stores.records import AuditRecord

KEY = Sealer(b"k" * 32)


def chain(n: int, tenant: str = "ten_a") -> list[AuditRecord]:
    out, prev = [], GENESIS
    seal = KEY.for_tenant(tenant)
    for seq in range(1, n + 1):
        fields = {"ts": 1000.0 + seq, "kind": "tool.allowed", "run_id": "run_1", "tool": "echo", "args_hash": "h",
                  "rule_id": "r", "policy_version": "v", "code": None, "cost_micro": seq, "detail": {"i": seq}}
        digest, mac = seal(prev, seq, fields)
        out.append(AuditRecord(tenant_id=tenant, seq=seq, prev_hash=prev, hash=digest, mac=mac, **fields))
        prev = digest
    return out


def test_intact_chain_verifies():
    assert verify_chain("ten_a", chain(10), KEY) is None


def test_changed_record():
    recs = chain(10)
    recs[4] = dataclasses.replace(recs[4], cost_micro=0)
    brk = verify_chain("ten_a", recs, KEY)
    assert brk.seq == 5 and "changed" in brk.problem


def test_deleted_record():
    recs = chain(10)
    del recs[3]
    brk = verify_chain("ten_a", recs, KEY)
    assert brk.seq == 5 and "gap" in brk.problem


def test_reordered_records():
    recs = chain(10)
    a, b = recs[2], recs[3]
    recs[2] = dataclasses.replace(b, seq=3)
    recs[3] = dataclasses.replace(a, seq=4)
    brk = verify_chain("ten_a", recs, KEY)
    assert brk is not None and brk.seq == 3


def test_inserted_record_with_recomputed_hashes_but_no_key():
    """A database writer can recompute sha256 links, not MACs: the forgery is caught."""
    recs = chain(5)
    forger = Sealer(b"x" * 32).for_tenant("ten_a")
    fields = {k: getattr(recs[2], k) for k in ("ts", "kind", "run_id", "tool", "args_hash", "rule_id",
                                               "policy_version", "code", "cost_micro", "detail")}
    fields["detail"] = {"forged": True}
    digest, mac = forger(recs[1].hash, 3, fields)
    forged = AuditRecord(tenant_id="ten_a", seq=3, prev_hash=recs[1].hash, hash=digest, mac=mac, **fields)
    brk = verify_chain("ten_a", [recs[0], recs[1], forged], KEY)
    assert brk.seq == 3 and "MAC" in brk.problem


def test_hand_edited_detail_is_named_not_crashed():
    """SQLite keeps any TEXT: a row whose detail is no longer JSON reads back raw, breaks the hash at that
    record (``stockade audit verify`` names it), and a receipt over it is still built."""
    from supervisor.audit.receipts import build_receipt
    from supervisor.stores.records import Run
    from supervisor.stores.sqlite._rows import to_audit

    recs = chain(3)
    row = dataclasses.asdict(recs[1]) | {"detail": "{not json"}
    edited = to_audit(row)  # type: ignore[arg-type]  # a mapping, as sqlite3.Row is
    assert edited.detail == "{not json"
    brk = verify_chain("ten_a", [recs[0], edited, recs[2]], KEY)
    assert brk is not None and brk.seq == 2 and "changed" in brk.problem
    run = Run(**{f.name: None for f in dataclasses.fields(Run)} | {"id": "run_1", "tenant_id": "ten_a"})
    assert build_receipt(run, [edited], edited)["spans"][0]["verdict"] is None


def test_records_of_another_tenant_do_not_verify():
    brk = verify_chain("ten_b", chain(3, tenant="ten_a"), KEY)
    assert brk is not None and brk.seq == 1


def test_short_keys_refused():
    with pytest.raises(ValueError):
        Sealer(b"short")


@pytest.mark.timeout(30)
async def test_sqlite_appenders_in_two_processes_never_fork_the_chain(tmp_path):
    """Two connections to one file (as the server and a CLI process have): each caches its own head,
    so the second writer's cached head is stale every other append; the primary key must turn that
    into a re-read and a re-seal, never two records with one seq or a record linking to the wrong one."""
    from supervisor.audit import AuditRecorder
    from supervisor.stores.sqlite import SqliteAuditLog, open_sqlite

    path = tmp_path / "s.db"
    db_a, db_b = await open_sqlite(path), await open_sqlite(path)
    try:
        db_a.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'a', 0)")
        a, b = AuditRecorder(SqliteAuditLog(db_a), KEY), AuditRecorder(SqliteAuditLog(db_b), KEY)
        seqs = []
        for i in range(30):
            rec = await (a if i % 3 else b).record("ten_a", "tool.allowed", tool="echo", detail={"i": i})
            seqs.append(rec.seq)
        assert seqs == list(range(1, 31))
        records = await SqliteAuditLog(db_a).list("ten_a", limit=100)
        assert [r.detail["i"] for r in records] == list(range(30))
        assert verify_chain("ten_a", records, KEY) is None
    finally:
        await db_a.close()
        await db_b.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("optimistic", [3, 0], ids=["one-round-trip", "queued-on-the-head-lock"])
async def test_postgres_appenders_in_two_processes_never_fork_the_chain(fresh_pg_url, optimistic, monkeypatch):
    """Two pools (as two supervisor processes have), each with its own cached head, appending
    concurrently and alternately: the head is advanced only from the head a record was sealed
    against, so the loser re-seals; one gap-free chain results, and it verifies. (In a database of its own: its
    chain is sealed with a key of this file's, which a production node on the shared one would refuse.)"""
    import asyncio
    import secrets

    from supervisor.audit import AuditRecorder
    from supervisor.stores.postgres import PgAuditLog
    from supervisor.stores.postgres.db import open_postgres

    monkeypatch.setattr("supervisor.stores.postgres.audit._OPTIMISTIC", optimistic)
    db_a, db_b = await open_postgres(fresh_pg_url), await open_postgres(fresh_pg_url)
    tenant = f"ten_{secrets.token_hex(4)}"
    try:
        async with db_a.acquire() as c:
            await c.execute("INSERT INTO tenants (id, name, created_at) VALUES ($1, $1, 0)", tenant)
        a, b = AuditRecorder(PgAuditLog(db_a), KEY), AuditRecorder(PgAuditLog(db_b), KEY)
        for i in range(10):  # alternating: every other append finds its cached head stale
            await (a if i % 2 else b).record(tenant, "tool.allowed", tool="echo", detail={"i": i})
        out = await asyncio.gather(*(  # concurrent, from both "processes" and within each
            (a if i % 2 else b).record(tenant, "tool.allowed", tool="echo", detail={"i": 10 + i}) for i in range(40)))
        assert sorted(r.seq for r in out) == list(range(11, 51))
        records = await PgAuditLog(db_a).list(tenant, limit=100)
        assert [r.seq for r in records] == list(range(1, 51))
        assert sorted(r.detail["i"] for r in records) == list(range(50))
        assert verify_chain(tenant, records, KEY) is None
        with pytest.raises(StockadeError) as err:  # the store names it; the recorder reports audit.unavailable
            await PgAuditLog(db_a).append("ten_nobody", {"kind": "tool.allowed"}, KEY.for_tenant("ten_nobody"))
        assert err.value.code == "not_found"
    finally:
        await db_a.close()
        await db_b.close()
