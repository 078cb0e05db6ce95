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
