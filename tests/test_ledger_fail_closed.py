"""PostgreSQL connection cut mid-run (a TCP fault proxy): the ledger fails closed and loses nothing.

- reserve / commit / accounts through a cut connection -> ``ledger.unavailable``;
- a request cut before it reaches the server leaves no trace;
- a reply lost after the server acted (the ambiguous case) leaves a whole
  reservation (swept at expiry) or a whole settlement (a retried commit finds it
  and charges nothing twice);
- under load, a cut in the middle leaves every account equal to the sum of its
  entries and held reservations, and every call that ran is settled exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.chain.base import Binding, CallState
from supervisor.chain.budget import BudgetInterceptor
from supervisor.errors import StockadeError
from supervisor.settings import load_settings
from supervisor.stores.postgres.db import open_postgres
from supervisor.stores.postgres.ledger import PgLedger
from tests.fakes.pg_fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(60)
T = "ten_fault"
FAR = time.time() + 3600


@pytest.fixture
async def env(fresh_pg_url: str, tmp_path):
    direct = await open_postgres(fresh_pg_url, min_size=1, max_size=2)  # migrates
    async with direct.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'fault', 0)", T)
    proxy = await FaultProxy().start()
    via = await open_postgres(proxy.url(fresh_pg_url.rsplit("/", 1)[1]), min_size=1, max_size=4, migrate=False)
    try:
        yield SimpleNamespace(proxy=proxy, ledger=PgLedger(via), truth=PgLedger(direct), direct=direct,
                              settings=load_settings(data_dir=tmp_path))
    finally:
        await via.close()
        await proxy.close()
        await direct.close()


async def _unavailable(coro: Any) -> None:
    with pytest.raises(StockadeError) as err:
        await coro
    assert err.value.code == "ledger.unavailable", err.value


async def _reservations(db: Any) -> dict[str, tuple[str, int]]:
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT id, state, amount_micro FROM budget_reservations WHERE tenant_id = $1", T)
    return {r["id"]: (r["state"], r["amount_micro"]) for r in rows}


async def _assert_consistent(db: Any) -> None:
    """Every account equals the sum of the charges of the settled reservations holding it (spent) and of its
    held reservations (reserved). (Each tier is metered on two rows, its month's and its lifetime one, and
    its entry is written on one of them: migration 0043.)"""
    async with db.acquire() as conn:
        bad = await conn.fetch(
            """SELECT a.id, a.spent_micro, a.reserved_micro,
                      (SELECT coalesce(sum(r.charged_micro), 0) FROM budget_reservations r
                        WHERE r.state = 'committed' AND a.id = ANY (r.account_ids)) AS entries,
                      (SELECT coalesce(sum(r.amount_micro), 0) FROM budget_reservations r
                        WHERE r.state = 'held' AND a.id = ANY (r.account_ids)) AS held
                 FROM budget_accounts a"""
        )
        assert bad, "no accounts at all"
        for r in bad:
            assert (r["spent_micro"], r["reserved_micro"]) == (r["entries"], r["held"]), dict(r)
        # a committed reservation has one entry per tier it holds (two rows each), each of the charged amount
        rows = await conn.fetch(
            """SELECT r.id, r.charged_micro, cardinality(r.account_ids) / 2 AS tiers,
                      (SELECT count(*) FROM ledger_entries e WHERE e.tenant_id = r.tenant_id AND e.reservation_id = r.id
                          AND e.account_id = ANY (r.account_ids)) AS n,
                      (SELECT coalesce(sum(e.amount_micro), 0) FROM ledger_entries e
                        WHERE e.tenant_id = r.tenant_id AND e.reservation_id = r.id) AS total
                 FROM budget_reservations r WHERE r.state = 'committed'"""
        )
        for r in rows:
            expected = (r["tiers"], r["tiers"] * r["charged_micro"]) if r["charged_micro"] else (0, 0)
            assert (r["n"], r["total"]) == expected, dict(r)


async def test_cut_connection_fails_closed_and_recovers(env):
    scopes = [("tenant", T), ("user", "usr_1")]
    await env.ledger.set_cap(T, "tenant", T, 10_000)
    held = await env.ledger.reserve(T, scopes, 1_000, reservation_id="rsv_before", run_id="run_1", expires_at=FAR,
                                    now=time.time())
    env.proxy.cut()
    await _unavailable(env.ledger.reserve(T, scopes, 500, reservation_id="rsv_during", run_id="run_1",
                                          expires_at=FAR, now=time.time()))
    await _unavailable(env.ledger.commit(T, held.id, 800, tool="echo", now=time.time()))
    await _unavailable(env.ledger.accounts(T, time.time()))
    await _unavailable(env.ledger.release_run(T, "run_1"))
    await _unavailable(env.ledger.sweep(time.time()))
    assert await _reservations(env.direct) == {"rsv_before": ("held", 1_000)}  # nothing of the cut calls
    env.proxy.restore()
    entries = await env.ledger.commit(T, held.id, 800, tool="echo", now=time.time())
    assert sorted(e.amount_micro for e in entries) == [800, 800]
    [acct] = await env.truth.accounts(T, time.time())
    assert (acct.spent_micro, acct.reserved_micro) == (800, 0)
    await _assert_consistent(env.direct)


async def test_request_cut_before_the_server_sees_it_leaves_no_trace(env):
    await env.ledger.set_cap(T, "tenant", T, 10_000)
    env.proxy.cut_when("to_server", lambda chunk: b"stockade_ledger_reserve" in chunk)
    await _unavailable(env.ledger.reserve(T, [("tenant", T)], 700, reservation_id="rsv_x", run_id="run_1",
                                          expires_at=FAR, now=time.time()))
    assert env.proxy.fired.is_set()
    env.proxy.restore()
    assert await _reservations(env.direct) == {}
    [acct] = await env.truth.accounts(T, time.time())
    assert (acct.spent_micro, acct.reserved_micro) == (0, 0)


async def test_lost_reply_to_reserve_leaves_a_whole_reservation_that_the_sweeper_releases(env):
    await env.ledger.set_cap(T, "tenant", T, 10_000)
    now = time.time()
    # The reserve function's result row: status 'ok'. The server has committed when it sends it.
    env.proxy.cut_when("to_client", lambda chunk: b"\x00\x00\x00\x02ok" in chunk)
    await _unavailable(env.ledger.reserve(T, [("tenant", T), ("project", "prj_1")], 700, reservation_id="rsv_amb",
                                          run_id="run_1", expires_at=now + 30, now=now))
    assert env.proxy.fired.is_set()
    env.proxy.restore()
    assert await _reservations(env.direct) == {"rsv_amb": ("held", 700)}  # whole: every tier, or none
    await _assert_consistent(env.direct)
    assert await env.ledger.sweep(now + 31) == 1
    [acct] = await env.truth.accounts(T, now)
    assert (acct.spent_micro, acct.reserved_micro) == (0, 0)
    await _assert_consistent(env.direct)


def _call(env: Any, cost: int) -> tuple[CallState, Any]:
    tool = SimpleNamespace(name="paid", default_price_micro=0, timeout_s=5.0, estimate_micro=lambda a, c: 2_000)
    services = SimpleNamespace(settings=env.settings, ledger=env.ledger)
    call = CallState(binding=Binding(tenant_id=T, run_id="run_i", bundle="b", bundle_version="1"),
                     tool_name="paid", raw_args={}, tool=tool, services=services)
    ran: list[int] = []

    async def nxt(c: CallState) -> dict[str, Any]:
        ran.append(1)
        c.cost_micro = cost
        return {"ok": True}

    return call, (nxt, ran)


@pytest.mark.parametrize("where", ["request_lost", "reply_lost"])
async def test_settlement_lost_to_a_cut_is_retried_once_the_ledger_is_back(env, where):
    await env.ledger.set_cap(T, "tenant", T, 10_000)
    icpt = BudgetInterceptor()
    call, (nxt, ran) = _call(env, 1_500)
    if where == "request_lost":
        env.proxy.cut_when("to_server", lambda chunk: b"stockade_ledger_commit" in chunk)
    else:  # the server committed; its reply never arrives
        env.proxy.cut_when("to_client", lambda chunk: b"\x00\x00\x00\x05entry" in chunk)
    assert await icpt(call, nxt) == {"ok": True}  # the call ran; its result is not thrown away
    assert ran == [1] and env.proxy.fired.is_set()
    state = (await _reservations(env.direct))[call.reservation_id][0]
    assert state == ("held" if where == "request_lost" else "committed")  # the ambiguous case really happened
    env.proxy.restore()
    async with asyncio.timeout(30):
        await icpt.drain()
    entries = await env.truth.entries(T)
    assert [(e.amount_micro, e.reservation_id) for e in entries] == [(1_500, call.reservation_id)]  # once, not twice
    [acct] = await env.truth.accounts(T, time.time())
    assert (acct.spent_micro, acct.reserved_micro) == (1_500, 0)
    await _assert_consistent(env.direct)


async def test_reserve_through_a_cut_never_runs_the_call(env):
    await env.ledger.set_cap(T, "tenant", T, 10_000)
    call, (nxt, ran) = _call(env, 100)
    env.proxy.cut()
    with pytest.raises(StockadeError) as err:
        await BudgetInterceptor()(call, nxt)
    assert err.value.code == "ledger.unavailable" and ran == []


async def test_cut_in_the_middle_of_load_loses_nothing(env):
    """Workers reserve+commit in a loop; the connection is cut after the 60th settlement, then restored."""
    await env.ledger.set_cap(T, "tenant", T, 10**12)
    await env.ledger.set_cap(T, "user", "usr_1", 10**12)
    ids = itertools.count()
    settled: dict[str, int] = {}  # reservation -> amount, as the client saw it succeed
    failed_commits: dict[str, int] = {}
    reserve_failures = 0
    cut_now = asyncio.Event()
    resumed = asyncio.Event()
    parked: set[int] = set()
    all_parked = asyncio.Event()
    n_workers = 6

    async def park(me: int) -> None:
        parked.add(me)
        if len(parked) == n_workers:
            all_parked.set()
        await resumed.wait()

    async def worker(me: int) -> None:
        nonlocal reserve_failures
        while len(settled) < 150:
            rid = f"rsv_{next(ids)}"
            amount = 100 + len(rid)
            try:
                await env.ledger.reserve(T, [("tenant", T), ("user", "usr_1")], amount, reservation_id=rid,
                                         run_id="run_load", expires_at=FAR, now=time.time())
            except StockadeError as exc:
                assert exc.code == "ledger.unavailable"
                reserve_failures += 1
                await park(me)
                continue
            try:
                await env.ledger.commit(T, rid, amount, tool="echo", now=time.time())
                settled[rid] = amount
            except StockadeError as exc:
                assert exc.code == "ledger.unavailable"
                failed_commits[rid] = amount
                await park(me)
            if len(settled) == 60:
                cut_now.set()

    async def chaos() -> None:
        await cut_now.wait()
        env.proxy.cut()
        await all_parked.wait()  # every worker has hit the cut (settled cannot grow while it lasts)
        env.proxy.restore()
        resumed.set()

    await asyncio.gather(chaos(), *(worker(i) for i in range(n_workers)))
    assert env.proxy.cut_count == 1 and reserve_failures + len(failed_commits) > 0
    await _assert_consistent(env.direct)  # nothing half-written at any point
    # Every call that "ran" (its reservation was made) but whose settlement failed is settled by a retry, once.
    for rid, amount in failed_commits.items():
        await env.ledger.commit(T, rid, amount, tool="echo", now=time.time())
    rows = await _reservations(env.direct)
    for rid, amount in {**settled, **failed_commits}.items():
        assert rows[rid] == ("committed", amount)
    # Reservations whose reply was lost (the caller saw ledger.unavailable, the call never ran) are released by expiry.
    await env.ledger.sweep(FAR + 1)
    await _assert_consistent(env.direct)
    async with env.direct.acquire() as conn:
        total = await conn.fetchval("SELECT coalesce(sum(amount_micro), 0) FROM ledger_entries WHERE scope = 'tenant'")
        held = await conn.fetchval("SELECT count(*) FROM budget_reservations WHERE state = 'held'")
    assert total == sum(settled.values()) + sum(failed_commits.values())
    assert held == 0
