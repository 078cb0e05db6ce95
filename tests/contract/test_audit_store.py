"""AuditLog contract (storage side): per-tenant chains, append-only, fail loudly."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
from typing import Any

import asyncpg
import pytest

from supervisor.errors import StockadeError
from tests.contract._helpers import store

KEY = b"test-mac-key"
GENESIS = "0" * 64


def seal(prev_hash: str, seq: int, fields: dict[str, Any], prev_mac: str | None = None) -> tuple[str, str]:
    body = json.dumps({"prev": prev_hash, "seq": seq, **fields}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    return digest, hmac.new(KEY, digest.encode(), hashlib.sha256).hexdigest()


def verify(records: list[Any]) -> None:
    prev = GENESIS
    for i, r in enumerate(records, start=1):
        fields = {k: getattr(r, k) for k in ("ts", "kind", "run_id", "tool", "args_hash", "rule_id",
                                            "policy_version", "code", "cost_micro", "detail")}
        assert r.seq == i and r.prev_hash == prev
        assert (r.hash, r.mac) == seal(prev, r.seq, fields), f"record {i} does not verify"
        prev = r.hash


@pytest.fixture
async def ctx(sql_db):
    return sql_db, store(sql_db, "AuditLog"), await sql_db.new_tenant()


async def test_append_builds_a_verifiable_chain(ctx):
    _, audit, t = ctx
    assert await audit.head(t) is None
    r1 = await audit.append(t, {"kind": "tool.allowed", "run_id": "run_1", "tool": "echo", "args_hash": "ab",
                                "rule_id": "echo", "policy_version": "v1", "cost_micro": 1000,
                                "detail": {"n": 1, "s": "é"}, "ts": 100.5}, seal)
    r2 = await audit.append(t, {"kind": "tool.denied", "code": "policy.denied", "run_id": "run_2"}, seal)
    assert (r1.seq, r1.prev_hash) == (1, GENESIS)
    assert (r2.seq, r2.prev_hash) == (2, r1.hash)
    assert r2.cost_micro == 0 and r2.detail == {} and r2.ts > 0 and r2.tool is None
    listed = await audit.list(t)
    assert listed == [r1, r2]
    verify(listed)
    assert await audit.head(t) == r2
    assert await audit.list(t, after_seq=1) == [r2]
    assert await audit.list(t, run_id="run_1") == [r1]
    assert await audit.list(t, limit=1) == [r1]
    assert t in await audit.tenants()


async def test_a_sample_of_tenants_is_the_first_in_id_order_with_a_record(ctx):
    sql_db, audit, t = ctx
    others = [await sql_db.new_tenant() for _ in range(3)]
    for tid in [t, *others]:
        await audit.append(tid, {"kind": "tool.allowed"}, seal)
    everyone = await audit.tenants()
    assert set(everyone) >= {t, *others} and everyone == sorted(everyone)
    sample = await audit.tenants(limit=2)  # (PostgreSQL: from the head rows, which other tests' attacks may cut)
    assert len(sample) == 2 and sample == sorted(sample) and set(sample) <= set(everyone)
    assert await audit.tenants(limit=0) == []


async def test_chains_are_per_tenant(ctx):
    sql_db, audit, t = ctx
    other = await sql_db.new_tenant()
    await audit.append(t, {"kind": "tool.allowed"}, seal)
    o1 = await audit.append(other, {"kind": "tool.allowed"}, seal)
    assert (o1.seq, o1.prev_hash) == (1, GENESIS)
    assert [r.tenant_id for r in await audit.list(other)] == [other]


async def test_seal_is_called_under_the_lock_with_the_head(ctx):
    _, audit, t = ctx
    seen: list[tuple[str, int]] = []

    def spy(prev: str, seq: int, fields: dict[str, Any], prev_mac: str | None = None) -> tuple[str, str]:
        seen.append((prev, seq))
        assert set(fields) == {"ts", "kind", "run_id", "tool", "args_hash", "rule_id", "policy_version", "code",
                               "cost_micro", "detail"}
        return seal(prev, seq, fields)

    r1 = await audit.append(t, {"kind": "a"}, spy)
    await audit.append(t, {"kind": "b"}, spy)
    assert seen == [(GENESIS, 1), (r1.hash, 2)]


async def test_concurrent_appends_form_one_unbroken_chain(ctx):
    _, audit, t = ctx
    n = 40
    barrier = asyncio.Barrier(n)

    async def one(i: int):
        await barrier.wait()
        return await audit.append(t, {"kind": "tool.allowed", "detail": {"i": i}}, seal)

    made = await asyncio.gather(*(one(i) for i in range(n)))
    assert sorted(r.seq for r in made) == list(range(1, n + 1))
    records = await audit.list(t, limit=1000)
    verify(records)
    assert sorted(r.detail["i"] for r in records) == list(range(n))


async def test_concurrent_appends_from_independent_connections(ctx):
    """Two handles on one database (e.g. API + worker processes) still share one chain."""
    sql_db, audit, t = ctx
    other_handle = await sql_db.reopen()
    try:
        audit2 = store(sql_db, "AuditLog", other_handle)
        barrier = asyncio.Barrier(20)

        async def one(a: Any, i: int):
            await barrier.wait()
            return await a.append(t, {"kind": "k", "detail": {"i": i}}, seal)

        await asyncio.gather(*(one(audit if i % 2 else audit2, i) for i in range(20)))
    finally:
        await other_handle.close()
    verify(await audit.list(t, limit=1000))


async def test_failed_seal_or_bad_input_writes_nothing(ctx):
    _, audit, t = ctx
    await audit.append(t, {"kind": "first"}, seal)

    def broken(prev: str, seq: int, fields: dict[str, Any], prev_mac: str | None = None) -> tuple[str, str]:
        raise RuntimeError("hsm down")

    with pytest.raises(RuntimeError):
        await audit.append(t, {"kind": "second"}, broken)
    for bad in ({"kind": ""}, {"kind": "x", "color": "red"}, {"kind": "x", "detail": {"o": object()}}):
        with pytest.raises(StockadeError) as err:
            await audit.append(t, bad, seal)
        assert err.value.code == "input.invalid"
    with pytest.raises(StockadeError) as err:
        await audit.append("ten_missing", {"kind": "x"}, seal)
    assert err.value.code == "not_found"
    nxt = await audit.append(t, {"kind": "third"}, seal)
    assert nxt.seq == 2
    verify(await audit.list(t))


async def test_update_and_delete_are_refused_by_the_database(ctx):
    sql_db, audit, t = ctx
    await audit.append(t, {"kind": "tool.allowed", "cost_micro": 5}, seal)
    attempts = ["UPDATE audit_log SET cost_micro = 0 WHERE tenant_id = {p}",
                "DELETE FROM audit_log WHERE tenant_id = {p}"]
    if sql_db.kind == "sqlite":
        for sql in attempts:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                sql_db.db.execute(sql.format(p="?"), (t,))
    else:
        for sql in attempts + ["TRUNCATE audit_log"]:
            # even the owner / a superuser: the trigger refuses
            async with sql_db.db.acquire() as conn:
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                    await conn.execute(sql.format(p="$1"), *([t] if "$1" in sql.format(p="$1") else []))
            # and the application role has no such privilege at all
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with sql_db.db.tenant_tx(t) as conn:
                    await conn.execute(sql.format(p="$1"), *([t] if "$1" in sql.format(p="$1") else []))
    (rec,) = await audit.list(t)
    assert rec.cost_micro == 5


async def test_unreachable_store_raises_audit_unavailable(sql_db, tmp_path):
    t = await sql_db.new_tenant()
    handle = await sql_db.reopen()
    audit = store(sql_db, "AuditLog", handle)
    await audit.append(t, {"kind": "ok"}, seal)
    await handle.close()
    with pytest.raises(StockadeError) as err:
        await audit.append(t, {"kind": "lost"}, seal)
    assert err.value.code == "audit.unavailable"
    assert [r.kind for r in await store(sql_db, "AuditLog").list(t)] == ["ok"]


async def test_floats_the_database_normalises_still_verify(ctx):
    # jsonb (PostgreSQL) reads 1e16 back as 10000000000000000 and -0.0 as 0.0: a record sealed over the float
    # broke its tenant's chain from that record on. SQLite keeps the text. Both must verify, and the record
    # append returns must be the record that is read back.
    _, audit, t = ctx
    detail = {"big": 1e16, "neg0": -0.0, "huge": -1.5e300, "tiny": 5e-324, "list": [2e20, -0.0, 0.5, 1e-7],
              "nested": {"x": 1e300, "n": 12345678901234567890}, "plain": 100.0}
    r1 = await audit.append(t, {"kind": "tool.allowed", "detail": detail}, seal)
    r2 = await audit.append(t, {"kind": "tool.completed"}, seal)
    listed = await audit.list(t)
    assert listed == [r1, r2]
    verify(listed)
    assert listed[0].detail["tiny"] == 5e-324 and listed[0].detail["plain"] == 100.0
