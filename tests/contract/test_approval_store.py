"""ApprovalStore contract: decided exactly once; expiry; tenant scoping.

Chosen semantics: a second decision raises ``approval.already_decided``; deciding
an expired approval (swept, or merely past ``expires_at``) raises ``approval.expired``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from supervisor.errors import StockadeError
from supervisor.ids import new_id
from supervisor.stores.records import Approval
from tests.contract._helpers import store


def make(tenant_id: str, *, ttl: float = 3600.0, created_at: float | None = None) -> Approval:
    now = created_at if created_at is not None else time.time()
    return Approval(id=new_id("apr_"), tenant_id=tenant_id, run_id="run_x", tool="echo", args_hash="h" * 64,
                    args={"n": 11, "nested": {"a": [1, 2]}}, rule_id="big-echo", reason="n > 10",
                    status="pending", created_at=now, expires_at=now + ttl)


@pytest.fixture
async def ctx(sql_db):
    return sql_db, store(sql_db, "ApprovalStore"), await sql_db.new_tenant()


async def test_create_get_list(ctx):
    sql_db, approvals, t = ctx
    other = await sql_db.new_tenant()
    a1 = await approvals.create(make(t, created_at=100.0))
    a2 = await approvals.create(make(t, created_at=200.0))
    assert await approvals.get(t, a1.id) == a1
    assert await approvals.get(other, a1.id) is None
    assert [a.id for a in await approvals.list(t)] == [a2.id, a1.id]
    assert await approvals.list(t, status="approved") == []
    assert [a.id for a in await approvals.list(t, status="pending", limit=1)] == [a2.id]
    assert await approvals.list(other) == []
    a3 = await approvals.create(replace(make(t, created_at=300.0), run_id="run_y"))
    assert [a.id for a in await approvals.list(t, run_id="run_y")] == [a3.id]
    assert [a.id for a in await approvals.list(t, status="pending", run_id="run_x")] == [a2.id, a1.id]
    assert await approvals.list(t, status="approved", run_id="run_y") == []
    assert await approvals.list(other, run_id="run_y") == []


async def test_create_bad_input(ctx):
    _, approvals, t = ctx
    with pytest.raises(StockadeError) as err:
        await approvals.create(make("ten_missing"))
    assert err.value.code == "not_found"
    a = await approvals.create(make(t))
    with pytest.raises(StockadeError) as err:
        await approvals.create(a)
    assert err.value.code == "conflict"


async def test_decide_exactly_once(ctx):
    _, approvals, t = ctx
    a = await approvals.create(make(t))
    now = time.time()
    done = await approvals.decide(t, a.id, status="approved", decided_by="key_1", reason="fine", now=now)
    assert (done.status, done.decided_by, done.decision_reason, done.decided_at) == ("approved", "key_1", "fine", now)
    with pytest.raises(StockadeError) as err:
        await approvals.decide(t, a.id, status="rejected", decided_by="key_2", reason=None, now=now)
    assert err.value.code == "approval.already_decided" and err.value.extra["status"] == "approved"
    assert (await approvals.get(t, a.id)).status == "approved"


async def test_decide_bad_input(ctx):
    sql_db, approvals, t = ctx
    other = await sql_db.new_tenant()
    a = await approvals.create(make(t))
    with pytest.raises(StockadeError) as err:
        await approvals.decide(t, a.id, status="pending", decided_by=None, reason=None, now=time.time())
    assert err.value.code == "input.invalid"
    with pytest.raises(StockadeError) as err:  # another tenant cannot decide it
        await approvals.decide(other, a.id, status="approved", decided_by=None, reason=None, now=time.time())
    assert err.value.code == "not_found"
    assert (await approvals.get(t, a.id)).status == "pending"


async def test_concurrent_decisions_one_wins(ctx):
    _, approvals, t = ctx
    a = await approvals.create(make(t))
    n = 8
    barrier = asyncio.Barrier(n)

    async def decide(i: int):
        await barrier.wait()
        try:
            return await approvals.decide(t, a.id, status="approved" if i % 2 else "rejected",
                                          decided_by=f"key_{i}", reason=None, now=time.time())
        except StockadeError as exc:
            return exc

    results = await asyncio.gather(*(decide(i) for i in range(n)))
    wins = [r for r in results if isinstance(r, Approval)]
    losses = [r for r in results if isinstance(r, StockadeError)]
    assert len(wins) == 1 and len(losses) == n - 1
    assert all(e.code == "approval.already_decided" for e in losses)
    stored = await approvals.get(t, a.id)
    assert (stored.status, stored.decided_by) == (wins[0].status, wins[0].decided_by)


async def test_expire_due_and_decide_after_expiry(ctx):
    _, approvals, t = ctx
    now = time.time()
    old = await approvals.create(make(t, ttl=10, created_at=now - 100))
    fresh = await approvals.create(make(t, ttl=3600, created_at=now))
    expired = await approvals.expire_due(now)
    assert old.id in {a.id for a in expired} and fresh.id not in {a.id for a in expired}
    assert all(a.status == "expired" for a in expired)
    assert old.id not in {a.id for a in await approvals.expire_due(now)}  # only once
    with pytest.raises(StockadeError) as err:
        await approvals.decide(t, old.id, status="approved", decided_by="key_1", reason=None, now=now)
    assert err.value.code == "approval.expired"
    assert (await approvals.get(t, fresh.id)).status == "pending"


async def test_decide_past_due_expires_instead(ctx):
    _, approvals, t = ctx
    now = time.time()
    a = await approvals.create(make(t, ttl=5, created_at=now - 60))  # due, not yet swept
    with pytest.raises(StockadeError) as err:
        await approvals.decide(t, a.id, status="approved", decided_by="key_1", reason="ok", now=now)
    assert err.value.code == "approval.expired"
    stored = await approvals.get(t, a.id)
    assert stored.status == "expired" and stored.decided_by is None
    # the explicit "expired" decision is allowed on a pending one
    b = await approvals.create(make(t))
    assert (await approvals.decide(t, b.id, status="expired", decided_by=None, reason="run ended", now=now)).status == "expired"
