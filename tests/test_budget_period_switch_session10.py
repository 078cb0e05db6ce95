"""A budget cap that switches period keeps what was spent (session 10).

Every tier is metered on its month row and its lifetime row; the cap checks the row of its own period
kind (supervisor/budget/periods.py). The contract suite (tests/contract/test_ledger.py) holds the
behaviour on both adapters through lone calls; here:

- PostgreSQL's batch functions (what the coalescer sends under load) across a switch;
- migration 0043 on a ledger written by the code before it (one row per tier): the figures after a
  switch count the old spend, and reservations held or released before it settle on both rows.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from supervisor.budget import period_key
from supervisor.stores.postgres.db import PgDB
from supervisor.stores.postgres.ledger import PgLedger
from supervisor.stores.sqlite.ledger import SqliteLedger
from tests.test_ledger_batching import FAR, NOW, T, env  # noqa: F401  (env: a fixture)

DEC = datetime(2025, 12, 10, tzinfo=UTC).timestamp()
JAN = datetime(2026, 1, 15, tzinfo=UTC).timestamp()
LATER = JAN + 10 * 365 * 86400


async def rows_of(db: PgDB, tenant: str) -> dict[tuple[str, str, str], tuple[int, int]]:
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT scope, scope_id, period_key, spent_micro, reserved_micro FROM budget_accounts"
                                " WHERE tenant_id = $1", tenant)
    return {(r["scope"], r["scope_id"], r["period_key"]): (r["spent_micro"], r["reserved_micro"]) for r in rows}


async def test_batches_meter_both_periods_across_a_switch(env):  # noqa: F811
    url, db, ledger = env
    month = period_key(NOW, "month")
    await ledger.set_cap(T, "tenant", T, 10_000, "month")

    def item(rid: str, amount: int, user: bool = False) -> tuple[Any, ...]:
        tiers = [("tenant", T), ("user", "usr_1")] if user else [("tenant", T)]
        return (tiers, amount, rid, "run_b", FAR, NOW, month)

    assert await ledger._reserve_batch(T, [item("rsv_1", 3_000, True), item("rsv_2", 4_000)]) == [("ok",), ("ok",)]
    outs = await ledger._commit_batch(T, [("rsv_1", 3_000, "echo", NOW), ("rsv_nope", 1, "echo", NOW)])
    assert [(e["r_scope"], e["r_period_key"]) for e in outs[0][1]] == [("tenant", month), ("user", month)]
    assert outs[1] == ("missing",)
    await ledger.set_cap(T, "tenant", T, 10_000, "lifetime")  # rsv_2 is still held
    outs = await ledger._reserve_batch(T, [item("rsv_3", 3_001), item("rsv_4", 3_000)])
    assert outs == [("exceeded", "tenant", T, 10_000, 3_000), ("ok",)]  # 3,000 spent and 4,000 held count
    outs = await ledger._commit_batch(T, [("rsv_2", 4_000, "echo", NOW), ("rsv_4", 1_000, "echo", NOW)])
    assert [[(e["r_period_key"], e["r_amount"]) for e in o[1]] for o in outs] == [[("lifetime", 4_000)],
                                                                                 [("lifetime", 1_000)]]
    rows = await rows_of(db, T)
    assert rows[("tenant", T, month)] == rows[("tenant", T, "lifetime")] == (8_000, 0)
    assert rows[("user", "usr_1", month)] == rows[("user", "usr_1", "lifetime")] == (3_000, 0)
    await ledger.set_cap(T, "tenant", T, 10_000, "month")
    assert [(a.period_key, a.spent_micro) for a in await ledger.accounts(T, NOW)] == [(month, 8_000)]


# --------------------------------------------------------------------------- migration 0043 on older data


@pytest.fixture(params=["sqlite", "postgres"])
def unmigrated(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """("sqlite", path) or ("postgres", url of a database no migration ran on). Sync: pg fixtures run their own loop."""
    if request.param == "sqlite":
        return "sqlite", tmp_path / "stockade.db"
    return "postgres", request.getfixturevalue("fresh_pg_url")


def _sqlite_old_ledger(db: Any, t: str) -> dict[str, str]:
    """What the SQLite ledger before 0043 wrote for: caps (tenant: month, user: lifetime); 1,000 spent in
    December and 2,000 in January on both tiers; 500 held and 700 released in January. One row per tier:
    the tenant's month rows, the user's lifetime row."""
    with db.tx() as conn:
        conn.execute("INSERT INTO budget_caps VALUES (?, 'tenant', ?, 100000, 'month', 0)", (t, t))
        conn.execute("INSERT INTO budget_caps VALUES (?, 'user', 'usr_u', 100000, 'lifetime', 0)", (t,))
        ids = {}
        for scope, sid, pk, spent, reserved in [("tenant", t, "2025-12", 1_000, 0), ("tenant", t, "2026-01", 2_000, 500),
                                                ("user", "usr_u", "lifetime", 3_000, 500)]:
            cur = conn.execute("INSERT INTO budget_accounts (tenant_id, scope, scope_id, period_key, spent_micro,"
                               " reserved_micro) VALUES (?, ?, ?, ?, ?, ?)", (t, scope, sid, pk, spent, reserved))
            ids[pk] = cur.lastrowid
        for rid, state, amount, when, accs in [("rsv_dec", "committed", 1_000, DEC, [ids["2025-12"], ids["lifetime"]]),
                                               ("rsv_jan", "committed", 2_000, JAN, [ids["2026-01"], ids["lifetime"]]),
                                               ("rsv_held", "held", 500, JAN, [ids["2026-01"], ids["lifetime"]]),
                                               ("rsv_gone", "released", 700, JAN, [ids["2026-01"], ids["lifetime"]])]:
            conn.execute("INSERT INTO budget_reservations (tenant_id, id, run_id, amount_micro, account_ids, state,"
                         " created_at, expires_at, charged_micro) VALUES (?, ?, 'run_1', ?, ?, ?, ?, ?, ?)",
                         (t, rid, amount, json.dumps(sorted(accs)), state, when, LATER,
                          amount if state == "committed" else None))
            if state == "committed":
                for acc in accs:
                    scope, sid, pk = ("user", "usr_u", "lifetime") if acc == ids["lifetime"] else \
                        ("tenant", t, "2025-12" if acc == ids["2025-12"] else "2026-01")
                    conn.execute("INSERT INTO ledger_entries (tenant_id, account_id, scope, scope_id, period_key,"
                                 " amount_micro, reservation_id, run_id, tool, ts) VALUES (?, ?, ?, ?, ?, ?, ?,"
                                 " 'run_1', 'echo', ?)", (t, acc, scope, sid, pk, amount, rid, when + 1))
    return ids


async def _pg_old_ledger(ledger: PgLedger, t: str) -> None:
    """The same story, written by the PostgreSQL functions before 0043 (the database is migrated up to it)."""
    await ledger.set_cap(t, "tenant", t, 100_000, "month")
    await ledger.set_cap(t, "user", "usr_u", 100_000, "lifetime")
    scopes = [("tenant", t), ("user", "usr_u")]
    for rid, amount, when in [("rsv_dec", 1_000, DEC), ("rsv_jan", 2_000, JAN), ("rsv_held", 500, JAN),
                              ("rsv_gone", 700, JAN)]:
        await ledger.reserve(t, scopes, amount, reservation_id=rid, run_id="run_1", expires_at=LATER, now=when)
        if rid in ("rsv_dec", "rsv_jan"):
            await ledger.commit(t, rid, amount, tool="echo", now=when + 1)
    await ledger.release(t, "rsv_gone")


async def test_migration_0043_backfills_both_periods_of_every_tier(unmigrated, tmp_path):
    from supervisor.stores.migrations.runner import HERE, migrate_postgres, migrate_sqlite
    from supervisor.stores.postgres import PgTenantStore, open_postgres
    from supervisor.stores.sqlite import SqliteTenantStore, open_sqlite

    kind, where = unmigrated
    before = tmp_path / "before"
    before.mkdir()
    for f in (HERE / kind).glob("*.sql"):
        if f.name < "0043":
            shutil.copy(f, before / f.name)
    if kind == "sqlite":
        db = await open_sqlite(where, migrate=False)
        await migrate_sqlite(db, before)
        store: Any = SqliteTenantStore(db)
        ledger: Any = SqliteLedger(db)
    else:
        await migrate_postgres(where, before)
        db = await open_postgres(where, min_size=1, max_size=2, migrate=False)
        store, ledger = PgTenantStore(db), PgLedger(db)
    try:
        t = (await store.create_tenant("old")).id
        if kind == "sqlite":
            _sqlite_old_ledger(db, t)
        else:
            await _pg_old_ledger(ledger, t)
        old_entries = await ledger.entries(t)
        applied = await (migrate_sqlite(db) if kind == "sqlite" else migrate_postgres(db))
        assert "0043_budget_period_spend.sql" in applied
        assert await ledger.entries(t) == old_entries  # the history is not rewritten

        def figures(accounts: list[Any]) -> dict[str, tuple[str, int, int]]:
            return {a.scope: (a.period_key, a.spent_micro, a.reserved_micro) for a in accounts}

        # both tiers switch: the lifetime figure is everything ever spent, the month one January's
        await ledger.set_caps(t, [("tenant", t, 100_000, "lifetime"), ("user", "usr_u", 100_000, "month")])
        assert figures(await ledger.accounts(t, JAN)) == {"tenant": ("lifetime", 3_000, 500),
                                                          "user": ("2026-01", 2_000, 500)}
        assert figures(await ledger.accounts(t, DEC))["user"] == ("2025-12", 1_000, 0)
        # the reservation held before the migration settles on both rows, the released one late, both once
        got = await ledger.commit(t, "rsv_held", 500, tool="echo", now=JAN + 2)
        assert sorted((e.scope, e.period_key, e.amount_micro) for e in got) == [
            ("tenant", "lifetime", 500), ("user", "2026-01", 500)]
        got = await ledger.commit(t, "rsv_gone", 700, tool="echo", now=JAN + 3)
        assert sorted((e.scope, e.period_key, e.amount_micro) for e in got) == [
            ("tenant", "lifetime", 700), ("user", "2026-01", 700)]
        assert figures(await ledger.accounts(t, JAN)) == {"tenant": ("lifetime", 4_200, 0),
                                                          "user": ("2026-01", 3_200, 0)}
        await ledger.set_caps(t, [("tenant", t, 100_000, "month"), ("user", "usr_u", 100_000, "lifetime")])
        assert figures(await ledger.accounts(t, JAN)) == {"tenant": ("2026-01", 3_200, 0),
                                                          "user": ("lifetime", 4_200, 0)}
        # and a new reservation holds (and a release frees) both rows as well
        r = await ledger.reserve(t, [("tenant", t), ("user", "usr_u")], 100, reservation_id="rsv_new",
                                 run_id="run_1", expires_at=LATER, now=JAN)
        await ledger.release(t, r.id)
        assert figures(await ledger.accounts(t, JAN)) == {"tenant": ("2026-01", 3_200, 0),
                                                          "user": ("lifetime", 4_200, 0)}
    finally:
        await db.close()
