"""Attacks on budgets, the ledger and rate limits (session 6), each a regression test of a real finding.

- A cap whose period is changed (month <-> lifetime) by ``PUT /v1/budgets`` while a reservation is
  on its way: PostgreSQL's reserve found the account row of the old period, then checked it against
  the cap of the new period, matched none, and took the tier for uncapped - any amount passed.
- A tool reporting a cost the ledger cannot take (above MAX_MICRO, NaN, negative, not an int): the
  settlement failed, the reservation stayed held until it expired and the call was never charged.
- A cap lowered below spent + reserved while calls were in flight: their settlements charged in
  full, so committed spend passed the (new) hard cap.
- A tenant policy's ``llm_prices`` reached the tool only at execution: the budget step reserved the
  worst case at the shipped prices (1/100 of it in the test), and settlement is capped at the reservation.
- A policy rate so slow that the bucket's expiry overflows Redis' SET PX: every call of the tenant
  failed as ``rate.unavailable`` on Redis (or got a negative retry_after, or a fresh bucket refused its
  first call to float rounding) while the embedded limiter metered it.

Attacks that held get a test too (marked "held"): caps lowered mid-race on two handles, expiry sweeps
racing late settlements, Redis cut mid-run through the whole chain (one audit record), memory-limiter growth.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from supervisor.budget import MAX_MICRO
from supervisor.chain.base import Binding, CallState
from supervisor.chain.budget import BudgetInterceptor
from supervisor.errors import StockadeError
from supervisor.settings import load_settings
from supervisor.stores.postgres.db import PgDB, open_postgres
from supervisor.stores.postgres.ledger import PgLedger
from supervisor.stores.sqlite.ledger import SqliteLedger
from tests import test_budget_interceptor as _budget
from tests.contract import conftest as _contract

backend, budget_env = _budget.backend, _budget.env  # the budget step's test env: SQLite and PostgreSQL
sql_target = _contract.sql_target  # the contract suite's fixtures: SQLite and PostgreSQL
sql_db = _contract.sql_db

pytestmark = pytest.mark.timeout(60)

T = "ten_attack6"
NOW = time.time()
FAR = NOW + 3600


def rid() -> str:
    return "rsv_" + secrets.token_hex(8)


# --------------------------------------------------------------------------- helpers (PostgreSQL)


@pytest.fixture
async def pg(fresh_pg_url: str):
    db = await open_postgres(fresh_pg_url, min_size=1, max_size=6)  # migrates the fresh database
    async with db.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'attack6', 0)", T)
    try:
        yield fresh_pg_url, db, PgLedger(db)
    finally:
        await db.close()


@asynccontextmanager
async def row_locked(url: str, sql: str, *args: Any) -> AsyncIterator[int]:
    """Another transaction holds ``sql``'s row locks (FOR UPDATE) until the block ends; yields its backend pid."""
    conn = await asyncpg.connect(url)
    tx = conn.transaction()
    await tx.start()
    try:
        assert await conn.fetch(sql, *args), "nothing to lock"
        yield conn.get_server_pid()
    finally:
        await tx.rollback()
        await conn.close()


async def blocked_by(url: str, pid: int) -> None:
    """Wait until some backend waits on a lock ``pid`` holds (another server's state: polled, bounded)."""
    conn = await asyncpg.connect(url)
    try:
        for _ in range(1000):
            if await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))", pid):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("nothing ever waited on the lock")
    finally:
        await conn.close()


HOLD_ROW = "SELECT 1 FROM budget_account_holds WHERE tenant_id = $1 AND scope = 'tenant' FOR UPDATE"


async def pg_accounts(db: PgDB) -> dict[tuple[str, str], tuple[int, int]]:
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT scope, period_key, spent_micro, reserved_micro FROM budget_accounts WHERE tenant_id = $1", T)
    return {(r["scope"], r["period_key"]): (r["spent_micro"], r["reserved_micro"]) for r in rows}


# --------------------------------------------------------------------------- cap period changed mid-reserve


@pytest.mark.parametrize("path", ["single", "batch"])
async def test_a_cap_switched_to_lifetime_mid_reserve_is_still_enforced(pg, path):
    """Month cap 1000; a reserve of 10^12 (over any cap) finds the month row, then waits on its lock; meanwhile
    the admin switches the tenant to a lifetime cap of 0. It must be refused, not taken for an uncapped tier.
    (Since 0043 the reserve holds the month and the lifetime row alike and needs no retry.)"""
    url, db, ledger = pg
    await ledger.set_cap(T, "tenant", T, 1_000, "month")
    first = await ledger.reserve(T, [("tenant", T)], 10, reservation_id=rid(), run_id="run_a", expires_at=FAR, now=NOW)
    await ledger.commit(T, first.id, 10, tool="echo", now=NOW)  # the month row exists now
    huge = 10**12
    async with row_locked(url, HOLD_ROW, T) as locker:
        if path == "single":
            task = asyncio.ensure_future(ledger.reserve(T, [("tenant", T)], huge, reservation_id=rid(), run_id="run_a",
                                                        expires_at=FAR, now=NOW))
        else:  # the batch function, called as the coalescer calls it for several waiters
            from supervisor.budget import period_key
            month = period_key(NOW, "month")
            items = [([("tenant", T)], huge, rid(), "run_a", FAR, NOW, month),
                     ([("tenant", T)], 5, rid(), "run_a", FAR, NOW, month)]
            task = asyncio.ensure_future(ledger._reserve_batch(T, items))
        await blocked_by(url, locker)
        await ledger.set_cap(T, "tenant", T, 0, "lifetime")  # PUT /v1/budgets, while the reserve waits
    outcome = (await asyncio.gather(task, return_exceptions=True))[0]
    if path == "single":
        assert isinstance(outcome, StockadeError) and outcome.code == "budget.exceeded", outcome
        assert outcome.extra["tier"] == "tenant" and outcome.extra["cap_usd"] == 0.0
    else:
        assert [o[0] for o in outcome] == ["exceeded", "exceeded"], outcome
    held = {k: v for k, v in (await pg_accounts(db)).items() if v[1]}
    assert held == {}, held  # nothing was reserved, on any period's row


async def test_a_cap_set_on_an_uncapped_tier_mid_reserve_is_enforced(pg):
    """An uncapped user tier gets its first cap (lifetime, 0) while a reserve that found its month row waits."""
    url, db, ledger = pg
    scopes = [("tenant", T), ("user", "usr_new")]
    first = await ledger.reserve(T, scopes, 10, reservation_id=rid(), run_id="run_a", expires_at=FAR, now=NOW)
    await ledger.commit(T, first.id, 10, tool="echo", now=NOW)
    async with row_locked(url, HOLD_ROW, T) as locker:
        task = asyncio.ensure_future(ledger.reserve(T, scopes, 500, reservation_id=rid(), run_id="run_a",
                                                    expires_at=FAR, now=NOW))
        await blocked_by(url, locker)
        await ledger.set_cap(T, "user", "usr_new", 0, "lifetime")
    outcome = (await asyncio.gather(task, return_exceptions=True))[0]
    assert isinstance(outcome, StockadeError) and outcome.code == "budget.exceeded", outcome
    assert outcome.extra["tier"] == "user"


# --------------------------------------------------------------------------- a tool's insane cost report


@pytest.fixture
def chain_env(budget_env: Any) -> Any:
    """The budget step's own test env (tests/test_budget_interceptor.py): a tenant and a ledger on SQLite
    and on PostgreSQL, with the services the step reads."""
    return budget_env


class EstimatedTool:
    name = "fake"
    default_price_micro = 0
    timeout_s = 5.0

    def __init__(self, estimate: int) -> None:
        self.estimate = estimate

    def estimate_micro(self, args: Any, ctx: Any) -> int:
        return self.estimate


@pytest.mark.parametrize("reported", [10**16, MAX_MICRO + 1, float("nan"), float("inf"), -5, "12", True, 2.5])
async def test_an_insane_cost_report_still_settles_the_reservation(chain_env, reported):
    """The call ran: whatever the tool reports, its reservation is settled now (never left held to expire
    unbilled), a report the ledger cannot take is charged the worst case that was reserved, and a sane
    fractional one is rounded up."""
    env = chain_env
    t = env.tenant_id
    await env.ledger.set_cap(t, "tenant", t, 1_000_000)
    b = Binding(tenant_id=t, run_id="run_" + secrets.token_hex(4), bundle="b", bundle_version="1")
    call = CallState(binding=b, tool_name="fake", raw_args={}, tool=EstimatedTool(1_000), services=env.services)

    async def nxt(c: CallState) -> dict[str, Any]:
        c.cost_micro = reported
        return {"ok": True}

    icpt = BudgetInterceptor()
    assert await asyncio.wait_for(icpt(call, nxt), 10) == {"ok": True}
    await icpt.drain()
    [acct] = await env.ledger.accounts(t, time.time())
    expected = 3 if reported == 2.5 else 1_000
    assert (acct.spent_micro, acct.reserved_micro) == (expected, 0)
    [entry] = await env.ledger.entries(t)
    assert entry.amount_micro == expected and entry.reservation_id == call.reservation_id
    assert call.cost_micro == expected


# --------------------------------------------------------------------------- absurdly slow rates


@pytest.mark.parametrize("rate", [1e-300, 1e-16, 1e-13, 1e-9])
@pytest.mark.parametrize("clock", ["given", "real"])
async def test_a_very_slow_rate_is_metered_alike_on_both_stacks(limiter, rate, clock):
    """A policy may set ``user_per_s: 1e-13`` (the schema asks only > 0). Redis refused every call of the tenant
    (``rate.unavailable``: the bucket's expiry overflowed SET PX), or answered a negative retry_after (the wait
    overflowed the integer reply), or refused a fresh bucket's first call (float rounding of now + I - I).
    Both stacks must do what the memory one does: the first call passes, the next ones wait, retry_after > 0."""
    from supervisor.stores.records import RateRule

    rule = RateRule("p:t:u." + secrets.token_hex(4), rate, 1)
    now = 1_800_000_000.0 if clock == "given" else None
    first = await limiter.check([rule], now)
    assert first.allowed, first
    for _ in range(2):
        d = await limiter.check([rule], now)
        assert not d.allowed and d.rule_key == rule.key
        assert math.isfinite(d.retry_after_s) and d.retry_after_s > 1e6, d  # a long wait, never negative


# --------------------------------------------------------------------------- held: caps lowered mid-race

def ledger_of(db: Any) -> Any:
    return PgLedger(db) if isinstance(db, PgDB) else SqliteLedger(db)


async def test_a_cap_lowered_below_spend_mid_race_admits_nothing_after_it(sql_db):
    """Six clients on two handles (two nodes) reserve and settle on three tiers while the admin lowers the
    project cap below what was already spent: every reserve begun after the PUT returned is refused, every
    settlement begun after it charges nothing more (unbilled_micro), every account equals its entries,
    nothing stays held, no user cap is passed."""
    price = 1_000
    t = await sql_db.new_tenant()
    ledger = ledger_of(sql_db.db)
    other = await sql_db.reopen()
    try:
        ledger2 = ledger_of(other)
        await ledger.set_cap(t, "tenant", t, 10**9)
        await ledger.set_cap(t, "project", "prj_x", 50 * price)
        for u in range(3):
            await ledger.set_cap(t, "user", f"usr_{u}", 12 * price)
        go, lowered, five = asyncio.Event(), asyncio.Event(), asyncio.Event()
        settled = 0
        after: list[str] = []
        charged: list[int] = []

        async def client(c: int) -> None:
            nonlocal settled
            lg = ledger if c % 2 else ledger2
            scopes = [("tenant", t), ("project", "prj_x"), ("user", f"usr_{c % 3}")]
            await go.wait()
            for _ in range(10):
                began_after = lowered.is_set()
                now = time.time()
                try:
                    r = await lg.reserve(t, scopes, price, reservation_id=rid(), run_id=f"run_{c}", expires_at=now + 300,
                                         now=now)
                except StockadeError as exc:
                    assert exc.code == "budget.exceeded", exc
                    if began_after:
                        after.append(exc.extra["tier"])
                    continue
                assert not began_after, "a reservation passed a cap lowered before it began"
                settling_after = lowered.is_set()
                entries = await lg.commit(t, r.id, price, tool="echo", now=time.time())
                got = sum(e.amount_micro for e in entries if e.scope == "project")
                if settling_after:  # held across the PUT: the project is over its new cap, nothing more is charged
                    assert got == 0 and all(e.detail.get("unbilled_micro") == price for e in entries), entries
                charged.append(got)
                settled += 1
                if settled >= 5:
                    five.set()
                await asyncio.sleep(0)  # a yield: the others (and the admin) get in between two calls

        async def admin() -> None:
            await five.wait()
            await ledger.set_cap(t, "project", "prj_x", 3 * price)  # PUT /v1/budgets: below what is spent
            lowered.set()

        tasks = [asyncio.create_task(client(c)) for c in range(6)] + [asyncio.create_task(admin())]
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 45)
        assert after and set(after) == {"project"}
        accts = {(a.scope, a.scope_id): a for a in await ledger.accounts(t, time.time())}
        entries = await ledger.entries(t, limit=1000)
        for key, a in accts.items():
            assert a.reserved_micro == 0
            assert a.spent_micro == sum(e.amount_micro for e in entries if (e.scope, e.scope_id) == key)
        assert all(accts[("user", f"usr_{u}")].spent_micro <= 12 * price for u in range(3))
        assert accts[("tenant", t)].spent_micro == accts[("project", "prj_x")].spent_micro == sum(charged)
        assert 5 * price <= sum(charged) <= 50 * price
    finally:
        await other.close()


async def test_expiry_sweep_racing_late_settlements_releases_and_charges_each_once(sql_db):
    """Crashed-looking reservations (already expired) are swept by two sweepers while their calls settle late,
    on two handles: each reservation is released at most once, charged at most once, never above the cap."""
    price = 1_000
    t = await sql_db.new_tenant()
    ledger = ledger_of(sql_db.db)
    other = await sql_db.reopen()
    try:
        ledger2 = ledger_of(other)
        await ledger.set_cap(t, "tenant", t, 30 * price)
        base = 1_000.0  # expiries in 1970, before any other test's: their held reservations are not swept here
        ids = []
        for _ in range(30):
            r = await ledger.reserve(t, [("tenant", t), ("user", "usr_s")], price, reservation_id=rid(), run_id="run_s",
                                     expires_at=base, now=NOW)
            ids.append(r.id)
        go = asyncio.Event()

        async def settle(i: int, r: str) -> int:
            await go.wait()
            entries = await (ledger if i % 2 else ledger2).commit(t, r, price, tool="echo", now=NOW)
            return sum(e.amount_micro for e in entries if e.scope == "tenant")

        async def sweep(lg: Any) -> int:
            await go.wait()
            return await lg.sweep(base + 1)

        tasks = [asyncio.create_task(settle(i, r)) for i, r in enumerate(ids)]
        sweeps = [asyncio.create_task(sweep(ledger)), asyncio.create_task(sweep(ledger2))]
        go.set()
        charged = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        swept = sum(await asyncio.wait_for(asyncio.gather(*sweeps), 30))
        assert swept <= 30 and sum(charged) == 30 * price  # the cap fits them all: late or not, each charged once
        [acct] = await ledger.accounts(t, NOW)
        assert (acct.spent_micro, acct.reserved_micro) == (30 * price, 0)
        entries = await ledger.entries(t, limit=1000)
        assert len(entries) == 60 and len({(e.reservation_id, e.scope) for e in entries}) == 60
        for r in ids:  # settling again changes nothing
            assert sum(e.amount_micro for e in await ledger.commit(t, r, price, tool="echo", now=NOW)) == 2 * price
        assert await ledger.sweep(base + 1) == 0
    finally:
        await other.close()


# --------------------------------------------------------------------------- held: Redis gone mid-call, through the chain

ECHO_POLICY = """version: 1
rules:
  - id: echo
    tool: echo
    verdict: allow
prices:
  echo: 0.001
"""


@pytest.mark.timeout(60)
async def test_redis_gone_mid_run_refuses_with_rate_unavailable_and_one_audit_record(pg_url, redis_url, redis_prefix,
                                                                                     tmp_path):
    """The production stack with its Redis behind a proxy that is cut between two calls: the second call is
    refused ``rate.unavailable``, never executes, reserves nothing, and is audited exactly once."""
    from urllib.parse import urlsplit

    from supervisor.audit.chain import Sealer
    from supervisor.audit.keys import load_audit_key
    from supervisor.audit.recorder import AuditRecorder
    from supervisor.chain.build import build_chain
    from supervisor.factory import open_services
    from supervisor.policy import load_policy
    from tests.fakes.tcp_proxy import TcpProxy

    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    settings = load_settings(data_dir=tmp_path, database_url=pg_url, redis_url=proxy.url(path=parts.path or "/0"),
                             redis_prefix=redis_prefix)
    services = await open_services(settings)
    try:
        tenant = await services.tenants.create_tenant("t-" + secrets.token_hex(5))
        await services.ledger.set_cap(tenant.id, "tenant", tenant.id, 10_000)
        await services.policies.put(tenant.id, ECHO_POLICY, load_policy(ECHO_POLICY, source="policy").version)
        chain, _ = build_chain(AuditRecorder(services.audit, Sealer(load_audit_key(settings))))
        b = Binding(tenant_id=tenant.id, run_id="run_cut", bundle="b", bundle_version="1")
        assert await asyncio.wait_for(chain(CallState(b, "echo", {"i": 1}, services=services)), 10)
        proxy.cut("reset")
        call = CallState(b, "echo", {"i": 2}, services=services)
        with pytest.raises(StockadeError) as err:
            await asyncio.wait_for(chain(call), 10)
        assert err.value.code == "rate.unavailable" and call.reservation_id is None
        records = await services.audit.list(tenant.id, limit=100)
        kinds = [r.kind for r in records]
        assert kinds.count("rate.unavailable") == 1 and kinds.count("tool.allowed") == 1, kinds
        [acct] = await services.ledger.accounts(tenant.id, time.time())
        assert (acct.spent_micro, acct.reserved_micro) == (1_000, 0)  # only the first call was charged
    finally:
        proxy.restore()
        await services.close()
        await proxy.close()


async def test_the_memory_limiter_forgets_buckets_that_are_full_again():
    """Many distinct keys (a principal per run): buckets whose TAT has passed are dropped, so the map is
    bounded by the buckets still draining, not by every key ever seen."""
    from supervisor.stores.memory import MemoryRateLimiter
    from supervisor.stores.records import RateRule

    lim = MemoryRateLimiter()
    t0 = 1_000.0
    for i in range(5_000):
        assert (await lim.check([RateRule(f"p:t:r.run{i}", 10.0, 5)], t0)).allowed
    assert len(lim._tats) == 5_000
    for _ in range(4_096):  # later, every one of them is full again
        await lim.check([RateRule("p:t:r.live", 1e6, 10**6)], t0 + 60)
    assert len(lim._tats) <= 1


# --------------------------------------------------------------------------- a cap lowered under held reservations


async def test_settlements_never_pass_a_cap_lowered_while_they_were_held(sql_db):
    """Two calls reserve 4000 each under a cap of 10000; the admin lowers the cap to 5000 while they run. Their
    settlements charged 8000 in full: committed spend passed the hard cap. The first fits; the second is charged
    what is left (1000), the rest recorded as unbilled_micro, on every tier alike."""
    await _lowered_cap(sql_db, "one by one")


@pytest.mark.parametrize("sql_target", ["postgres"], indirect=True)  # the batch settlement is PostgreSQL's
async def test_batched_settlements_never_pass_a_cap_lowered_while_they_were_held(sql_db):
    await _lowered_cap(sql_db, "batch")


async def _lowered_cap(sql_db: Any, path: str) -> None:
    t = await sql_db.new_tenant()
    ledger = ledger_of(sql_db.db)
    await ledger.set_cap(t, "tenant", t, 10_000)
    scopes = [("tenant", t), ("user", "usr_l")]
    r1 = await ledger.reserve(t, scopes, 4_000, reservation_id=rid(), run_id="run_l", expires_at=FAR, now=NOW)
    r2 = await ledger.reserve(t, scopes, 4_000, reservation_id=rid(), run_id="run_l", expires_at=FAR, now=NOW)
    await ledger.set_cap(t, "tenant", t, 5_000)  # PUT /v1/budgets while both calls run
    if path == "batch":
        outcomes = await ledger._commit_batch(t, [(r1.id, 4_000, "echo", NOW), (r2.id, 4_000, "echo", NOW)])
        first, second = ([r for r in o[1]] for o in outcomes)
        charged = [sum(r["r_amount"] for r in first if r["r_scope"] == "tenant"),
                   sum(r["r_amount"] for r in second if r["r_scope"] == "tenant")]
        details = [r["r_detail"] for r in second]
    else:
        e1 = await ledger.commit(t, r1.id, 4_000, tool="echo", now=NOW)
        e2 = await ledger.commit(t, r2.id, 4_000, tool="echo", now=NOW)
        charged = [sum(e.amount_micro for e in e1 if e.scope == "tenant"),
                   sum(e.amount_micro for e in e2 if e.scope == "tenant")]
        details = [e.detail for e in e2]
    assert charged == [4_000, 1_000]
    assert all(d["unbilled_micro"] == 3_000 and d["actual_micro"] == 4_000 for d in details), details
    accts = {a.scope: a for a in await ledger.accounts(t, NOW)}
    assert (accts["tenant"].spent_micro, accts["tenant"].reserved_micro) == (5_000, 0)  # exactly the new cap
    entries = await ledger.entries(t)
    assert sum(e.amount_micro for e in entries if e.scope == "user") == 5_000  # every tier charged alike
    again = await ledger.commit(t, r2.id, 4_000, tool="echo", now=NOW)  # a repeat returns the first settlement
    assert sorted(e.amount_micro for e in again) == [1_000, 1_000]
    await ledger.set_cap(t, "tenant", t, 100_000)
    r3 = await ledger.reserve(t, [("tenant", t)], 4_000, reservation_id=rid(), run_id="run_l", expires_at=FAR, now=NOW)
    await ledger.set_cap(t, "tenant", t, 0)  # below what is spent already: the held call is charged nothing
    assert await ledger.commit(t, r3.id, 4_000, tool="echo", now=NOW) == []
    assert {a.scope: a for a in await ledger.accounts(t, NOW)}["tenant"].spent_micro == 5_000


# --------------------------------------------------------------------------- the tenant's LLM prices, reserved


async def test_an_llm_call_reserves_its_worst_case_at_the_tenants_own_prices(chain_env, tmp_path):
    """A tenant policy's ``llm_prices`` (here 100x the shipped table) reached the tool's context only in the
    execute step, after the budget step had estimated with the shipped prices: the call reserved 1/100 of its
    worst case, settled at the tenant's price was clamped to that, and the cap let 100x more through."""
    from decimal import Decimal

    from supervisor.tools.base import ToolContext
    from supervisor.tools.llm._tokens import input_ceiling
    from supervisor.tools.llm.args import LlmChatArgs
    from supervisor.tools.llm.pricing import Price
    from supervisor.tools.llm.tool import LlmChatTool

    env = chain_env
    t = env.tenant_id
    tool = LlmChatTool(env.services.settings)
    try:
        args = LlmChatArgs.model_validate({"model": "openai/gpt-4.1-mini", "max_tokens": 1000,
                                           "messages": [{"role": "user", "content": "hello"}]})
        b = Binding(tenant_id=t, run_id="run_llm", bundle="b", bundle_version="1")
        call = CallState(binding=b, tool_name="llm.chat", raw_args={}, tool=tool, services=env.services)
        call.args = args
        call.tool_ctx = ToolContext(tenant_id=t, run_id=b.run_id, user_id=None, project_id=None, emit=_no_emit)
        call.extra["llm_prices"] = {"openai/gpt-4.1-mini": {"input_per_mtok": 40.0, "output_per_mtok": 160.0}}
        worst = Price(Decimal(40), Decimal(160)).cost_micro(input_ceiling(args), 1000)  # at the tenant's price
        await env.ledger.set_cap(t, "tenant", t, worst)
        seen: list[int | None] = []

        async def nxt(c: CallState) -> dict[str, Any]:  # what execute does: the tool charges the tenant's price
            seen.append(c.reserved_micro)
            c.cost_micro = worst
            return {"ok": True}

        icpt = BudgetInterceptor()
        await asyncio.wait_for(icpt(call, nxt), 10)
        await icpt.drain()
        assert seen == [worst]
        [acct] = await env.ledger.accounts(t, time.time())
        assert (acct.spent_micro, acct.reserved_micro) == (worst, 0)  # the whole cost, within the cap
    finally:
        await tool.aclose()


async def _no_emit(type_: str, data: dict[str, Any]) -> None:
    return None
