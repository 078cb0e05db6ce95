"""ApprovalStore.vote contract (N-person approval), on SQLite and PostgreSQL.

Votes are durable and judged with the request locked: one reject rejects, the N-th approve approves,
a key (or a user) votes once, an expired request takes no vote (and stays expired), a stale
``expected_votes`` writes nothing, and racing voters - on separate connection pools, as separate API
processes would be - lose no vote and decide once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from supervisor.errors import StockadeError
from supervisor.ids import new_id
from supervisor.stores.postgres import open_postgres
from supervisor.stores.records import Approval
from supervisor.stores.sqlite import open_sqlite
from tests.contract._helpers import store


def make(tenant_id: str, *, n: int = 2, separate: bool = False, ttl: float = 3600.0) -> Approval:
    now = time.time()
    return Approval(id=new_id("apr_"), tenant_id=tenant_id, run_id="run_x", tool="payments.send", args_hash="h" * 64,
                    args={"usd": 5000}, rule_id="big-payments", reason="needs two", status="pending",
                    created_at=now, expires_at=now + ttl, required_approvals=n, separate=separate)


@pytest.fixture
async def ctx(sql_db):
    return sql_db, store(sql_db, "ApprovalStore"), await sql_db.new_tenant()


async def vote(approvals, t, a, key, decision="approve", user=None, **kw):
    return await approvals.vote(t, a.id, key_id=key, user_id=user, decision=decision, reason=f"by {key}",
                                now=kw.pop("now", time.time()), **kw)


async def refused(code, coro):
    with pytest.raises(StockadeError) as err:
        await coro
    assert err.value.code == code, err.value
    return err.value


async def test_terms_are_stored_and_read_back(ctx):
    _, approvals, t = ctx
    a = await approvals.create(make(t, n=3, separate=True))
    got = await approvals.get(t, a.id)
    assert got == a and got.required_approvals == 3 and got.separate is True and got.votes == ()
    assert (await approvals.list(t))[0] == a


async def test_two_approvers_one_vote_keeps_it_pending_the_second_decides(ctx):
    _, approvals, t = ctx
    a = await approvals.create(make(t, n=2))
    first = await vote(approvals, t, a, "key_a", user="usr_a")
    assert first.status == "pending" and first.decided_by is None
    assert [(v["key_id"], v["user_id"], v["decision"], v["reason"]) for v in first.votes] == [
        ("key_a", "usr_a", "approve", "by key_a")]
    assert await approvals.get(t, a.id) == first
    await refused("approval.already_decided", vote(approvals, t, a, "key_a"))  # the same key again
    await refused("approval.already_decided", vote(approvals, t, a, "key_b", user="usr_a"))  # same user, other key
    assert await approvals.get(t, a.id) == first  # refused votes changed nothing
    done = await vote(approvals, t, a, "key_c", user="usr_c")
    assert done.status == "approved" and done.decided_by == "key_c" and done.decision_reason == "by key_c"
    assert [v["key_id"] for v in done.votes] == ["key_a", "key_c"]
    assert await approvals.get(t, a.id) == done
    await refused("approval.already_decided", vote(approvals, t, a, "key_d"))
    await refused("approval.already_decided", vote(approvals, t, a, "key_e", "reject"))


async def test_a_reject_after_an_approve_rejects_at_once(ctx):
    _, approvals, t = ctx
    a = await approvals.create(make(t, n=3))
    await vote(approvals, t, a, "key_a")
    done = await vote(approvals, t, a, "key_b", "reject")
    assert done.status == "rejected" and done.decided_by == "key_b"
    assert [v["decision"] for v in done.votes] == ["approve", "reject"]
    await refused("approval.already_decided", vote(approvals, t, a, "key_c"))


async def test_keys_without_users_are_distinct_by_key(ctx):
    _, approvals, t = ctx
    a = await approvals.create(make(t, n=2))
    await vote(approvals, t, a, "key_a")  # unbound keys: no user to compare
    assert (await vote(approvals, t, a, "key_b")).status == "approved"


async def test_an_expired_request_takes_no_vote_and_stays_expired(ctx):
    _, approvals, t = ctx
    a = await approvals.create(make(t, n=2, ttl=1.0))
    await vote(approvals, t, a, "key_a", now=a.created_at + 0.5)
    await refused("approval.expired", vote(approvals, t, a, "key_b", now=a.created_at + 2))
    got = await approvals.get(t, a.id)
    assert got.status == "expired" and got.decided_by is None and [v["key_id"] for v in got.votes] == ["key_a"]
    await refused("approval.expired", vote(approvals, t, a, "key_c"))
    # swept by expire_due first: the same answer
    b = await approvals.create(make(t, n=2, ttl=1.0))
    assert [x.id for x in await approvals.expire_due(b.created_at + 2)] == [b.id]
    await refused("approval.expired", vote(approvals, t, b, "key_a"))
    # withdrawn (the run ended): expired, no vote counted
    c = await approvals.create(make(t, n=2))
    await approvals.decide(t, c.id, status="expired", decided_by=None, reason="the run ended", now=time.time())
    await refused("approval.expired", vote(approvals, t, c, "key_a"))


async def test_a_stale_expectation_writes_nothing(ctx):
    _, approvals, t = ctx
    a = await approvals.create(make(t, n=3))
    await vote(approvals, t, a, "key_a", expected_votes=0)
    before = await approvals.get(t, a.id)
    await refused("conflict", vote(approvals, t, a, "key_b", expected_votes=0))
    assert await approvals.get(t, a.id) == before
    assert len((await vote(approvals, t, a, "key_b", expected_votes=1)).votes) == 2


async def test_bad_votes_and_other_tenants(ctx):
    sql_db, approvals, t = ctx
    a = await approvals.create(make(t))
    await refused("input.invalid", vote(approvals, t, a, "key_a", "approved"))
    await refused("not_found", vote(approvals, t, replace(a, id="apr_missing"), "key_a"))
    other = await sql_db.new_tenant()
    await refused("not_found", vote(approvals, other, a, "key_a"))
    assert (await approvals.get(t, a.id)).votes == ()


async def test_a_single_decision_is_recorded_as_its_vote(ctx):
    _, approvals, t = ctx
    a = await approvals.create(make(t, n=1))
    done = await approvals.decide(t, a.id, status="rejected", decided_by="key_a", reason="no", now=time.time(),
                                  user_id="usr_a")
    assert done.status == "rejected"
    assert [(v["key_id"], v["user_id"], v["decision"], v["reason"]) for v in done.votes] == [
        ("key_a", "usr_a", "reject", "no")]
    b = await approvals.create(make(t, n=1))
    assert (await approvals.decide(t, b.id, status="expired", decided_by=None, reason="x", now=time.time())).votes == ()


async def test_racing_voters_lose_no_vote_and_decide_once(ctx):
    """Six voters released together, on six stores (PostgreSQL: six pools, like six API processes) for
    a request of five approvers: exactly five votes are kept, exactly one answer decides it, the sixth
    is refused; with a reject in the crowd the request is decided once either way."""
    sql_db, approvals, t = ctx
    if sql_db.kind == "postgres":
        extra = [await open_postgres(sql_db.url, min_size=1, max_size=2, migrate=False) for _ in range(6)]
    else:  # six connections to one file, each taking the write lock for its vote
        extra = [await open_sqlite(sql_db.path, migrate=False) for _ in range(6)]
    stores = [store(sql_db, "ApprovalStore", db) for db in extra]
    try:
        for round_ in range(3):
            a = await approvals.create(make(t, n=5))
            go = asyncio.Event()

            async def one(i: int, go: asyncio.Event = go, a: Approval = a, reject: int = 3 if round_ == 2 else -1):
                await go.wait()
                try:
                    return await vote(stores[i], t, a, f"key_{i}", "reject" if i == reject else "approve")
                except StockadeError as exc:
                    return exc.code

            tasks = [asyncio.create_task(one(i)) for i in range(6)]
            await asyncio.sleep(0)
            go.set()
            answers = await asyncio.gather(*tasks)
            final = await approvals.get(t, a.id)
            decided = [x for x in answers if isinstance(x, Approval) and x.status != "pending"]
            assert len(decided) == 1 and decided[0] == final, answers
            kept = [v["key_id"] for v in final.votes]
            accepted = [f"key_{i}" for i, x in enumerate(answers) if isinstance(x, Approval)]
            assert sorted(kept) == sorted(accepted) and len(set(kept)) == len(kept)  # no lost vote, none twice
            assert all(x == "approval.already_decided" for x in answers if not isinstance(x, Approval)), answers
            if round_ < 2:
                assert final.status == "approved" and len(kept) == 5
            else:
                assert final.status in ("approved", "rejected")
                assert final.status == "rejected" or "key_3" not in kept
    finally:
        for db in extra:
            await db.close()
