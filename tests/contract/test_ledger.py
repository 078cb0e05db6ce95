"""Ledger contract: the same behaviour from SQLite and PostgreSQL (``sql_db`` runs both)."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

import pytest

from supervisor.errors import StockadeError
from supervisor.stores.postgres.db import PgDB
from supervisor.stores.postgres.ledger import PgLedger
from supervisor.stores.sqlite.ledger import SqliteLedger

JAN = datetime(2026, 1, 15, tzinfo=UTC).timestamp()
JAN_END = datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC).timestamp()
FEB = datetime(2026, 2, 1, tzinfo=UTC).timestamp()
FAR = JAN + 10 * 365 * 86400  # an expiry no sweep in these tests reaches


def ledger_of(db: Any) -> Any:
    return PgLedger(db) if isinstance(db, PgDB) else SqliteLedger(db)


@pytest.fixture
async def ctx(sql_db):
    return sql_db, ledger_of(sql_db.db), await sql_db.new_tenant()


def rid() -> str:
    return "rsv_" + secrets.token_hex(8)


async def reserve(ledger: Any, t: str, amount: int, scopes: list[tuple[str, str]] | None = None, *,
                  run_id: str | None = "run_1", now: float = JAN, expires_at: float = FAR, reservation_id: str | None = None):
    return await ledger.reserve(t, [("tenant", t)] if scopes is None else scopes, amount, reservation_id=reservation_id or rid(),
                                run_id=run_id, expires_at=expires_at, now=now)


def by_scope(accounts: list[Any]) -> dict[str, Any]:
    return {a.scope: a for a in accounts}


async def test_reserve_commit_releases_the_rest(ctx):
    _, ledger, t = ctx
    acct = await ledger.set_cap(t, "tenant", t, 10_000)
    assert (acct.cap_micro, acct.period, acct.spent_micro, acct.reserved_micro) == (10_000, "month", 0, 0)
    await ledger.set_cap(t, "user", "usr_a", 5_000)
    scopes = [("tenant", t), ("project", "prj_a"), ("user", "usr_a")]
    res = await reserve(ledger, t, 3_000, scopes)
    assert res.state == "held" and res.amount_micro == 3_000
    assert set(res.accounts) == set(scopes)  # every tier is metered, capped or not
    accts = by_scope(await ledger.accounts(t, JAN))
    assert set(accts) == {"tenant", "user"}  # accounts() lists capped tiers only
    assert (accts["tenant"].reserved_micro, accts["user"].reserved_micro) == (3_000, 3_000)
    assert accts["tenant"].period_key == "2026-01"

    entries = await ledger.commit(t, res.id, 1_200, tool="echo", now=JAN + 1)
    assert sorted((e.scope, e.amount_micro) for e in entries) == [("project", 1_200), ("tenant", 1_200), ("user", 1_200)]
    assert all(e.reservation_id == res.id and e.run_id == "run_1" and e.tool == "echo" for e in entries)
    tenant_entry = next(e for e in entries if e.scope == "tenant")
    assert tenant_entry.detail["remaining_micro"] == 10_000 - 1_200
    assert "cap_micro" not in next(e for e in entries if e.scope == "project").detail  # uncapped
    accts = by_scope(await ledger.accounts(t, JAN))
    assert (accts["tenant"].spent_micro, accts["tenant"].reserved_micro) == (1_200, 0)
    assert (accts["user"].spent_micro, accts["user"].reserved_micro) == (1_200, 0)
    assert [e.id for e in await ledger.entries(t)] == sorted(e.id for e in entries)


async def test_over_cap_reserves_nothing_on_any_tier(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 100_000)
    await ledger.set_cap(t, "project", "prj_a", 1_000)
    scopes = [("tenant", t), ("project", "prj_a"), ("user", "usr_a")]
    first = await reserve(ledger, t, 600, scopes)
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, t, 600, scopes)
    e = err.value
    assert e.code == "budget.exceeded"
    assert (e.extra["tier"], e.extra["scope_id"], e.extra["cap_usd"], e.extra["remaining_usd"]) == (
        "project", "prj_a", 0.001, 0.0004)
    accts = by_scope(await ledger.accounts(t, JAN))
    assert accts["tenant"].reserved_micro == 600 and accts["project"].reserved_micro == 600  # unchanged
    await reserve(ledger, t, 400, scopes)  # exactly up to the cap is allowed
    await ledger.commit(t, first.id, 600, tool="x", now=JAN)
    assert by_scope(await ledger.accounts(t, JAN))["project"].spent_micro == 600


async def test_the_tightest_tier_is_named(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 500)
    await ledger.set_cap(t, "user", "usr_a", 300)
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, t, 1_000, [("tenant", t), ("user", "usr_a")])
    assert err.value.extra["tier"] == "user" and err.value.extra["remaining_usd"] == 0.0003


async def test_uncapped_tiers_are_metered_but_never_refuse(ctx):
    _, ledger, t = ctx
    scopes = [("tenant", t), ("user", "usr_b")]
    res = await reserve(ledger, t, 10**12, scopes)
    assert await ledger.accounts(t, JAN) == []
    await ledger.commit(t, res.id, 250, tool="echo", now=JAN)
    # A cap set mid-month starts from the real spend of this period.
    acct = await ledger.set_cap(t, "user", "usr_b", 1_000)
    # set_cap reports the current calendar period; the spend above was in January 2026.
    got = by_scope(await ledger.accounts(t, JAN))["user"]
    assert (got.spent_micro, got.reserved_micro, got.cap_micro) == (250, 0, 1_000)
    assert acct.cap_micro == 1_000
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, t, 751, scopes)
    assert err.value.extra["tier"] == "user"


async def test_commit_is_idempotent_and_never_charges_above_the_reservation(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 10_000)
    res = await reserve(ledger, t, 1_000)
    first = await ledger.commit(t, res.id, 1_500, tool="llm.chat", now=JAN)
    assert [e.amount_micro for e in first] == [1_000]
    assert first[0].detail["overage_micro"] == 500 and first[0].detail["actual_micro"] == 1_500
    again = await ledger.commit(t, res.id, 1_500, tool="llm.chat", now=JAN + 5)
    assert again == first
    other = await ledger.commit(t, res.id, 9, tool="llm.chat", now=JAN + 6)  # a different repeat changes nothing
    assert other == first
    acct = (await ledger.accounts(t, JAN))[0]
    assert (acct.spent_micro, acct.reserved_micro) == (1_000, 0)
    assert len(await ledger.entries(t)) == 1


async def test_zero_actual_releases_everything_and_writes_no_entry(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 1_000)
    res = await reserve(ledger, t, 700)
    assert await ledger.commit(t, res.id, 0, tool="echo", now=JAN) == []
    assert await ledger.commit(t, res.id, 0, tool="echo", now=JAN) == []
    acct = (await ledger.accounts(t, JAN))[0]
    assert (acct.spent_micro, acct.reserved_micro) == (0, 0)


async def test_release_and_late_commit(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 1_000)
    res = await reserve(ledger, t, 800)
    await ledger.release(t, res.id)
    await ledger.release(t, res.id)  # twice: no-op
    assert (await ledger.accounts(t, JAN))[0].reserved_micro == 0
    other = await reserve(ledger, t, 900)  # the released room is reusable
    # The call of the released reservation did run: it is charged late, only what still fits under the cap.
    late = await ledger.commit(t, res.id, 800, tool="echo", now=JAN)
    assert [e.amount_micro for e in late] == [100]
    assert late[0].detail["late"] is True and late[0].detail["unbilled_micro"] == 700
    await ledger.commit(t, other.id, 900, tool="echo", now=JAN)
    acct = (await ledger.accounts(t, JAN))[0]
    assert (acct.spent_micro, acct.reserved_micro) == (1_000, 0)  # never above the cap
    with pytest.raises(StockadeError) as err:
        await ledger.commit(t, "rsv_missing", 1, tool=None, now=JAN)
    assert err.value.code == "not_found"


async def test_release_run_releases_only_that_runs_held_reservations(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 10_000)
    a1 = await reserve(ledger, t, 100, run_id="run_a")
    a2 = await reserve(ledger, t, 200, run_id="run_a")
    await reserve(ledger, t, 300, run_id="run_a")
    b = await reserve(ledger, t, 400, run_id="run_b")
    await ledger.commit(t, a1.id, 100, tool="echo", now=JAN)
    assert await ledger.release_run(t, "run_a") == 2
    assert await ledger.release_run(t, "run_a") == 0
    acct = (await ledger.accounts(t, JAN))[0]
    assert (acct.spent_micro, acct.reserved_micro) == (100, 400)
    assert await ledger.commit(t, a1.id, 100, tool="echo", now=JAN)  # a committed one stays committed
    await ledger.release(t, b.id)
    assert (await ledger.accounts(t, JAN))[0].reserved_micro == 0
    assert a2.run_id == "run_a"


async def test_sweep_releases_expired_reservations_across_tenants(ctx):
    sql_db, ledger, t = ctx
    t2 = await sql_db.new_tenant()
    await ledger.set_cap(t, "tenant", t, 10_000)
    await ledger.set_cap(t2, "tenant", t2, 10_000)
    base = 1_000_000.0  # expiries in 1970: this sweep touches no other test's (or the app's) reservations
    await reserve(ledger, t, 100, expires_at=base + 10)
    keep = await reserve(ledger, t, 200, expires_at=base + 100)
    await reserve(ledger, t2, 300, expires_at=base + 5)
    done = await reserve(ledger, t2, 400, expires_at=base + 1)
    await ledger.commit(t2, done.id, 400, tool="echo", now=JAN)
    assert await ledger.sweep(base + 50) == 2
    assert await ledger.sweep(base + 50) == 0
    assert (await ledger.accounts(t, JAN))[0].reserved_micro == 200
    acct2 = (await ledger.accounts(t2, JAN))[0]
    assert (acct2.spent_micro, acct2.reserved_micro) == (400, 0)
    await ledger.commit(t, keep.id, 200, tool="echo", now=JAN)
    assert (await ledger.accounts(t, JAN))[0].spent_micro == 200


async def test_a_new_month_starts_at_zero_and_lifetime_does_not_roll(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 1_000)
    await ledger.set_cap(t, "user", "usr_l", 1_500, "lifetime")
    scopes = [("tenant", t), ("user", "usr_l")]
    jan = await reserve(ledger, t, 1_000, scopes, now=JAN_END)
    await ledger.commit(t, jan.id, 1_000, tool="echo", now=FEB + 1)  # settles into the period it reserved in
    with pytest.raises(StockadeError):
        await reserve(ledger, t, 1, scopes, now=JAN_END)
    feb = by_scope(await ledger.accounts(t, FEB))
    assert (feb["tenant"].period_key, feb["tenant"].spent_micro) == ("2026-02", 0)
    assert (feb["user"].period_key, feb["user"].spent_micro) == ("lifetime", 1_000)
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, t, 600, scopes, now=FEB)
    assert err.value.extra["tier"] == "user"  # the lifetime cap remembers January
    r = await reserve(ledger, t, 500, scopes, now=FEB)
    await ledger.commit(t, r.id, 500, tool="echo", now=FEB)
    assert sorted({(e.scope, e.period_key) for e in await ledger.entries(t)}) == [
        ("tenant", "2026-01"), ("tenant", "2026-02"), ("user", "lifetime")]
    assert by_scope(await ledger.accounts(t, JAN))["tenant"].spent_micro == 1_000


async def test_entries_paginate_without_gaps_or_repeats(ctx):
    _, ledger, t = ctx
    for i in range(7):
        r = await reserve(ledger, t, 10 + i, [("tenant", t), ("user", "usr_p")])
        await ledger.commit(t, r.id, 10 + i, tool="echo", now=JAN + i)
    seen: list[int] = []
    after = 0
    while True:
        page = await ledger.entries(t, after_id=after, limit=3)
        if not page:
            break
        assert len(page) <= 3
        seen += [e.id for e in page]
        after = page[-1].id
    assert len(seen) == 14 and seen == sorted(set(seen))
    assert sum(e.amount_micro for e in await ledger.entries(t, limit=1000)) == 2 * sum(10 + i for i in range(7))
    for bad in ({"after_id": -1}, {"limit": 0}, {"limit": 1001}):
        with pytest.raises(StockadeError) as err:
            await ledger.entries(t, **bad)
        assert err.value.code == "input.invalid"


async def test_tenants_never_see_each_other(ctx):
    sql_db, ledger, t = ctx
    t2 = await sql_db.new_tenant()
    await ledger.set_cap(t, "tenant", t, 1_000)
    res = await reserve(ledger, t, 500, run_id="run_x")
    with pytest.raises(StockadeError) as err:
        await ledger.commit(t2, res.id, 500, tool="echo", now=JAN)
    assert err.value.code == "not_found"
    await ledger.release(t2, res.id)
    assert await ledger.release_run(t2, "run_x") == 0
    assert (await ledger.accounts(t, JAN))[0].reserved_micro == 500
    await ledger.commit(t, res.id, 500, tool="echo", now=JAN)
    assert await ledger.entries(t2) == [] and await ledger.accounts(t2, JAN) == []
    # The same reservation id in another tenant is another reservation.
    await reserve(ledger, t2, 1, reservation_id=res.id)
    if sql_db.is_pg:  # row-level security: a tenant transaction sees no other tenant's ledger rows
        async with sql_db.db.tenant_tx(t2) as conn:
            for table in ("budget_caps", "budget_accounts", "budget_reservations", "ledger_entries"):
                assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", t) == 0


async def test_bad_input_changes_nothing(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 1_000)
    cases: list[tuple[Any, ...]] = [
        ([("tenant", t)], -1), ([("tenant", t)], 1.5), ([("planet", "x")], 1), ([], 1), ([("user", "")], 1),
        ([("tenant", t)], True),
    ]
    for scopes, amount in cases:
        with pytest.raises(StockadeError) as err:
            await reserve(ledger, t, amount, scopes)
        assert err.value.code == "input.invalid", (scopes, amount)
    for args in ((t, "tenant", "other", 1), (t, "user", "u", -5), (t, "user", "u", 5, "weekly"), (t, "galaxy", "g", 1)):
        with pytest.raises(StockadeError) as err:
            await ledger.set_cap(*args)
        assert err.value.code == "input.invalid", args
    res = await reserve(ledger, t, 10)
    with pytest.raises(StockadeError) as err:
        await ledger.commit(t, res.id, -3, tool=None, now=JAN)
    assert err.value.code == "input.invalid"
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, t, 10, reservation_id=res.id)
    assert err.value.code == "conflict"
    with pytest.raises(StockadeError) as err:
        await ledger.set_cap("ten_missing", "tenant", "ten_missing", 5)
    assert err.value.code == "not_found"
    acct = (await ledger.accounts(t, JAN))[0]
    assert (acct.cap_micro, acct.spent_micro, acct.reserved_micro) == (1_000, 0, 10)


async def test_warning_fires_once_per_tier_per_period(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 1_000)
    warned = []
    for now, amount in ((JAN, 700), (JAN, 100), (JAN, 100), (FEB, 850)):
        r = await reserve(ledger, t, amount, now=now)
        [e] = await ledger.commit(t, r.id, amount, tool="echo", now=now)
        warned.append(e.detail.get("warning_pct"))
    assert warned == [None, 80, None, 80]


async def test_concurrent_reservers_on_two_handles_never_pass_the_cap(ctx):
    sql_db, ledger, t = ctx
    other = await sql_db.reopen()
    try:
        ledger2 = ledger_of(other)
        await ledger.set_cap(t, "tenant", t, 10 * 7)
        go = asyncio.Event()

        async def one(i: int) -> int:
            await go.wait()
            lg = ledger if i % 2 else ledger2
            try:
                r = await reserve(lg, t, 7, [("tenant", t), ("user", f"usr_{i % 3}")])
            except StockadeError as exc:
                assert exc.code == "budget.exceeded"
                return 0
            await lg.commit(t, r.id, 7, tool="echo", now=JAN)
            return 1

        tasks = [asyncio.create_task(one(i)) for i in range(40)]
        go.set()
        assert sum(await asyncio.gather(*tasks)) == 10
        acct = (await ledger.accounts(t, JAN))[0]
        assert (acct.spent_micro, acct.reserved_micro) == (70, 0)
    finally:
        await other.close()


async def test_set_caps_is_one_transaction_all_or_none(ctx):
    # PUT /v1/budgets sets several caps: a failure at the second (here a trigger standing in for the database
    # refusing or going away part-way) must leave the first as it was, not half the request applied
    sql_db, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 10_000)
    if sql_db.kind == "sqlite":
        sql_db.db.execute("""CREATE TRIGGER boom BEFORE INSERT ON budget_caps WHEN NEW.scope_id = 'usr_boom'
                             BEGIN SELECT RAISE(ABORT, 'boom'); END""")
    else:
        async with sql_db.db.acquire() as conn:
            await conn.execute("""CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
                                  BEGIN RAISE EXCEPTION 'boom'; END $$;
                                  CREATE TRIGGER boom BEFORE INSERT ON budget_caps FOR EACH ROW
                                  WHEN (NEW.scope_id = 'usr_boom') EXECUTE FUNCTION boom()""")
    with pytest.raises(Exception, match="boom"):
        await ledger.set_caps(t, [("tenant", t, 20_000, "lifetime"), ("user", "usr_boom", 5_000, "month")])
    assert [(a.scope, a.cap_micro, a.period) for a in await ledger.accounts(t, JAN)] == [("tenant", 10_000, "month")]
    accts = await ledger.set_caps(t, [("tenant", t, 20_000, "lifetime"), ("user", "usr_a", 5_000, "month")])
    assert [(a.scope, a.scope_id, a.cap_micro, a.period) for a in accts] == [
        ("tenant", t, 20_000, "lifetime"), ("user", "usr_a", 5_000, "month")]
    assert sorted((a.scope, a.cap_micro) for a in await ledger.accounts(t, JAN)) == [("tenant", 20_000), ("user", 5_000)]
    with pytest.raises(StockadeError) as err:  # a bad cap anywhere in the list: checked before anything is written
        await ledger.set_caps(t, [("tenant", t, 1, "month"), ("user", "usr_a", -1, "month")])
    assert err.value.code == "input.invalid"
    assert sorted((a.scope, a.cap_micro) for a in await ledger.accounts(t, JAN)) == [("tenant", 20_000), ("user", 5_000)]


# --------------------------------------------------------------------------- a cap switching period (session 10)
# Every tier is metered on its month row and its lifetime row; the cap checks the row of its period kind.
# So a switch (PUT /v1/budgets) neither forgets what was spent or held, nor counts it twice.

DEC = datetime(2025, 12, 10, tzinfo=UTC).timestamp()


async def spend(ledger: Any, t: str, amount: int, scopes: list[tuple[str, str]] | None = None, now: float = JAN):
    res = await reserve(ledger, t, amount, scopes, now=now)
    return await ledger.commit(t, res.id, amount, tool="echo", now=now)


async def test_a_cap_switched_to_lifetime_counts_what_was_spent_under_month(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 10_000)
    await spend(ledger, t, 3_000, now=DEC)
    await spend(ledger, t, 6_000, now=JAN)
    acct = await ledger.set_cap(t, "tenant", t, 10_000, "lifetime")  # "$100 lifetime" after $90 was spent
    assert (acct.period_key, acct.spent_micro, acct.reserved_micro) == ("lifetime", 9_000, 0)
    got = await ledger.accounts(t, JAN)
    assert [(a.period, a.period_key, a.spent_micro) for a in got] == [("lifetime", "lifetime", 9_000)]
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, t, 1_001)
    assert err.value.extra["tier"] == "tenant" and err.value.extra["remaining_usd"] == 0.001
    await spend(ledger, t, 1_000)  # exactly what is left
    assert (await ledger.accounts(t, FEB))[0].spent_micro == 10_000  # and it does not roll over
    with pytest.raises(StockadeError):
        await reserve(ledger, t, 1, now=FEB)


async def test_a_cap_switched_to_month_counts_this_months_spend_made_under_lifetime(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 100_000, "lifetime")
    await spend(ledger, t, 3_000, now=DEC)
    await spend(ledger, t, 4_000, now=JAN)
    await ledger.set_cap(t, "tenant", t, 5_000, "month")
    got = (await ledger.accounts(t, JAN))[0]
    assert (got.period, got.period_key, got.spent_micro) == ("month", "2026-01", 4_000)  # January's, not December's
    assert (await ledger.accounts(t, DEC))[0].spent_micro == 3_000
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, t, 1_001)
    assert err.value.extra["remaining_usd"] == 0.001
    await spend(ledger, t, 1_000)
    assert (await ledger.accounts(t, FEB))[0].spent_micro == 0  # a new month still starts at zero
    await spend(ledger, t, 2_000, now=FEB)
    # and back to lifetime: every charge made under the monthly cap is there
    acct = await ledger.set_cap(t, "tenant", t, 100_000, "lifetime")
    assert acct.spent_micro == 10_000 and (await ledger.accounts(t, FEB))[0].spent_micro == 10_000
    # one entry per tier and charge, on the row the cap checked
    assert [(e.period_key, e.amount_micro) for e in await ledger.entries(t)] == [
        ("lifetime", 3_000), ("lifetime", 4_000), ("2026-01", 1_000), ("2026-02", 2_000)]


async def test_a_lifetime_cap_set_on_an_uncapped_tier_counts_every_earlier_month(ctx):
    _, ledger, t = ctx
    scopes = [("tenant", t), ("user", "usr_u")]
    await spend(ledger, t, 2_000, scopes, now=DEC)
    await spend(ledger, t, 500, scopes, now=JAN)
    acct = await ledger.set_cap(t, "user", "usr_u", 3_000, "lifetime")
    assert acct.spent_micro == 2_500
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, t, 501, scopes)
    assert err.value.extra["tier"] == "user"
    await spend(ledger, t, 500, scopes)
    assert len(await ledger.entries(t)) == 6  # one per tier and charge


async def test_a_reservation_held_across_a_switch_settles_once_on_both_periods(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 10_000)
    await spend(ledger, t, 2_000)
    held = await reserve(ledger, t, 5_000)
    await ledger.set_cap(t, "tenant", t, 10_000, "lifetime")
    got = (await ledger.accounts(t, JAN))[0]
    assert (got.period_key, got.spent_micro, got.reserved_micro) == ("lifetime", 2_000, 5_000)  # the hold counts
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, t, 3_001)
    assert err.value.extra["remaining_usd"] == 0.003
    entries = await ledger.commit(t, held.id, 4_000, tool="echo", now=JAN)
    assert [(e.scope, e.period_key, e.amount_micro) for e in entries] == [("tenant", "lifetime", 4_000)]
    assert entries[0].detail["spent_micro"] == 6_000 and entries[0].detail["remaining_micro"] == 4_000
    got = (await ledger.accounts(t, JAN))[0]
    assert (got.spent_micro, got.reserved_micro) == (6_000, 0)
    assert await ledger.commit(t, held.id, 4_000, tool="echo", now=JAN + 1) == entries  # a repeat changes nothing
    await ledger.set_cap(t, "tenant", t, 10_000, "month")  # and back: the month saw the same charge, once
    got = (await ledger.accounts(t, JAN))[0]
    assert (got.period_key, got.spent_micro, got.reserved_micro) == ("2026-01", 6_000, 0)
    await spend(ledger, t, 4_000)
    with pytest.raises(StockadeError):
        await reserve(ledger, t, 1)
    assert sum(e.amount_micro for e in await ledger.entries(t)) == 10_000


async def test_a_reservation_released_after_a_switch_frees_what_it_held(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 10_000, "lifetime")
    await spend(ledger, t, 1_000, now=DEC)
    a = await reserve(ledger, t, 6_000, run_id="run_a")
    b = await reserve(ledger, t, 2_000, run_id="run_b")
    await ledger.set_cap(t, "tenant", t, 9_000, "month")  # January: nothing spent yet, 8,000 held
    assert [(x.spent_micro, x.reserved_micro) for x in await ledger.accounts(t, JAN)] == [(0, 8_000)]
    with pytest.raises(StockadeError):
        await reserve(ledger, t, 1_001)
    await ledger.release(t, a.id)
    assert await ledger.release_run(t, "run_b") == 1
    assert [(x.spent_micro, x.reserved_micro) for x in await ledger.accounts(t, JAN)] == [(0, 0)]
    full = await reserve(ledger, t, 9_000)  # the month's whole cap is free again
    await ledger.set_cap(t, "tenant", t, 10_000, "lifetime")
    assert [(x.spent_micro, x.reserved_micro) for x in await ledger.accounts(t, JAN)] == [(1_000, 9_000)]
    await ledger.release(t, full.id)
    assert [(x.spent_micro, x.reserved_micro) for x in await ledger.accounts(t, JAN)] == [(1_000, 0)]
    # late settlements of released holds: charged at most what fits under the cap in force now, on both rows
    late = await ledger.commit(t, a.id, 6_000, tool="echo", now=JAN)
    assert [(e.period_key, e.amount_micro) for e in late] == [("lifetime", 6_000)]
    await ledger.set_cap(t, "tenant", t, 7_000, "month")  # January has 6,000 spent: 1,000 fits
    late = await ledger.commit(t, b.id, 2_000, tool="echo", now=JAN)
    assert [(e.period_key, e.amount_micro, e.detail["unbilled_micro"]) for e in late] == [("2026-01", 1_000, 1_000)]
    assert [(x.spent_micro, x.reserved_micro) for x in await ledger.accounts(t, JAN)] == [(7_000, 0)]
    await ledger.set_cap(t, "tenant", t, 10_000, "lifetime")
    assert [(x.spent_micro, x.reserved_micro) for x in await ledger.accounts(t, JAN)] == [(8_000, 0)]


async def test_reservers_racing_a_cap_that_flips_period_never_pass_it(ctx):
    sql_db, ledger, t = ctx
    other = ledger_of(await sql_db.reopen())  # a second handle: another node
    cap, price = 20_000, 1_000
    await ledger.set_cap(t, "tenant", t, cap, "month")
    go = asyncio.Event()

    async def caller(i: int) -> int:
        led, charged = (ledger if i % 2 else other), 0
        await go.wait()
        for _ in range(6):  # the switches land between the reserves and settlements of every caller
            try:
                res = await reserve(led, t, price)
            except StockadeError as exc:
                assert exc.code == "budget.exceeded", exc
                continue
            finally:
                await asyncio.sleep(0)
            await led.commit(t, res.id, price, tool="echo", now=JAN)
            charged += price
            await asyncio.sleep(0)
        return charged

    async def flipper() -> int:
        await go.wait()
        for n in range(24):
            await (other if n % 2 else ledger).set_cap(t, "tenant", t, cap, ("lifetime", "month")[n % 2])
            await asyncio.sleep(0)
        return 0

    try:
        tasks = [asyncio.ensure_future(caller(i)) for i in range(10)] + [asyncio.ensure_future(flipper())]
        go.set()
        charged = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        await other.db.close()
    assert sum(charged) == cap  # as many calls as fitted ran, and not one more
    assert sum(e.amount_micro for e in await ledger.entries(t, limit=1000)) == cap
    for period in ("month", "lifetime"):
        await ledger.set_cap(t, "tenant", t, cap, period)
        assert [(a.spent_micro, a.reserved_micro) for a in await ledger.accounts(t, JAN)] == [(cap, 0)]


async def test_an_expired_reservation_swept_after_a_switch_frees_both_periods(ctx):
    _, ledger, t = ctx
    await ledger.set_cap(t, "tenant", t, 10_000)
    base = 2_000_000.0  # expiries in 1970: this sweep touches no other test's (or the app's) reservations
    gone = await reserve(ledger, t, 7_000, expires_at=base + 1)
    await ledger.set_cap(t, "tenant", t, 10_000, "lifetime")
    assert [(a.spent_micro, a.reserved_micro) for a in await ledger.accounts(t, JAN)] == [(0, 7_000)]
    assert await ledger.sweep(base + 2) >= 1  # (the PostgreSQL database is shared: others' stale ones go too)
    assert [(a.spent_micro, a.reserved_micro) for a in await ledger.accounts(t, JAN)] == [(0, 0)]
    await ledger.set_cap(t, "tenant", t, 10_000, "month")
    assert [(a.spent_micro, a.reserved_micro) for a in await ledger.accounts(t, JAN)] == [(0, 0)]
    await spend(ledger, t, 10_000)  # the whole cap is free on both rows
    late = await ledger.commit(t, gone.id, 7_000, tool="echo", now=JAN)  # nothing fits any more: nothing charged
    assert late == []
    await ledger.set_cap(t, "tenant", t, 10_000, "lifetime")
    assert [(a.spent_micro, a.reserved_micro) for a in await ledger.accounts(t, JAN)] == [(10_000, 0)]
