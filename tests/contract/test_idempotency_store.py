"""IdempotencyStore contract: a key is claimed by exactly one caller."""

from __future__ import annotations

import asyncio
import time

import pytest

from supervisor.errors import StockadeError
from tests.contract._helpers import store


@pytest.fixture
async def ctx(sql_db):
    return sql_db, store(sql_db, "IdempotencyStore"), await sql_db.new_tenant()


async def test_claim_complete_replay(ctx):
    sql_db, idem, t = ctx
    other = await sql_db.new_tenant()
    now = time.time()
    assert await idem.get(t, "k") is None
    assert await idem.begin(t, "k", now) is None  # we own it
    pending = await idem.begin(t, "k", now + 1)
    assert pending is not None and (pending.state, pending.result, pending.created_at) == ("pending", None, now)
    assert await idem.begin(other, "k", now) is None  # keys are per tenant
    await idem.complete(t, "k", {"echo": {"n": 1}, "cost_usd": 0.001})
    done = await idem.begin(t, "k", now + 2)
    assert done is not None and done.state == "done" and done.result == {"echo": {"n": 1}, "cost_usd": 0.001}
    assert await idem.get(t, "k") == done


async def test_abandon_releases_only_pending(ctx):
    _, idem, t = ctx
    assert await idem.begin(t, "a", 1.0) is None
    await idem.abandon(t, "a")
    assert await idem.get(t, "a") is None
    assert await idem.begin(t, "a", 2.0) is None  # claimable again
    await idem.complete(t, "a", {"ok": True})
    await idem.abandon(t, "a")  # a done key is kept
    assert (await idem.get(t, "a")).state == "done"


async def test_bad_input(ctx):
    _, idem, t = ctx
    with pytest.raises(StockadeError) as err:
        await idem.begin("ten_missing", "k", 1.0)
    assert err.value.code == "not_found"
    with pytest.raises(StockadeError) as err:
        await idem.complete(t, "never-claimed", {})
    assert err.value.code == "not_found"
    assert await idem.begin(t, "k", 1.0) is None
    with pytest.raises(StockadeError) as err:
        await idem.complete(t, "k", {"x": object()})
    assert err.value.code == "input.invalid"
    assert (await idem.get(t, "k")).state == "pending"
    await idem.complete(t, "k", {"first": 1})
    with pytest.raises(StockadeError) as err:
        await idem.complete(t, "k", {"second": 2})
    assert err.value.code == "conflict"
    assert (await idem.get(t, "k")).result == {"first": 1}


async def test_concurrent_begin_exactly_one_claimant(ctx):
    _, idem, t = ctx
    for round_ in range(3):
        n = 10
        barrier = asyncio.Barrier(n)

        async def claim(barrier: asyncio.Barrier, key: str) -> object:
            await barrier.wait()
            return await idem.begin(t, key, time.time())

        results = await asyncio.gather(*(claim(barrier, f"race-{round_}") for _ in range(n)))
        assert sum(1 for r in results if r is None) == 1
        assert all(r.state == "pending" for r in results if r is not None)


async def test_prune_drops_old_keys_done_before_pending(ctx):
    """Keys were never pruned: every side-effect call left a row holding its result for ever (session 8)."""
    sql_db, idem, t = ctx
    other = await sql_db.new_tenant()
    for tenant in (t, other):
        for key, at in (("old-done", 1000.0), ("new-done", 3000.0), ("old-pending", 1000.0), ("ancient-pending", 100.0)):
            assert await idem.begin(tenant, key, at) is None
            if key.endswith("done"):
                await idem.complete(tenant, key, {"result": {"big": "x" * 1000}})
    n = await idem.prune(done_before=2000.0, pending_before=500.0)
    assert n >= 4  # both tenants' old done and ancient pending keys (others of this database may go too)
    for tenant in (t, other):
        assert await idem.get(tenant, "old-done") is None and await idem.get(tenant, "ancient-pending") is None
        assert (await idem.get(tenant, "new-done")).state == "done"
        assert (await idem.get(tenant, "old-pending")).state == "pending"  # its claimant may still hold it
    assert await idem.begin(t, "old-done", 4000.0) is None  # a repeat after that runs again


async def test_prune_goes_in_batches(ctx):
    _, idem, t = ctx
    for i in range(7):
        assert await idem.begin(t, f"b{i}", 50.0 + i) is None
        await idem.complete(t, f"b{i}", {})
    assert await idem.prune(done_before=60.0, pending_before=0.0, limit=3) == 3
    assert [await idem.get(t, f"b{i}") is None for i in range(7)] == [True] * 3 + [False] * 4  # oldest first
    assert await idem.prune(done_before=60.0, pending_before=0.0, limit=100) == 4
