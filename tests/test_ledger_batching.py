"""PgLedger's natural batching, adversarially, on real PostgreSQL.

Concurrent ``reserve()``/``commit()`` calls of one tenant are coalesced into one
stored-function call (``stockade_ledger_*_batch``, migration 0011). These tests pin
a batch down deterministically: a row lock held by another connection keeps the
first (lone) call in flight, the calls started meanwhile queue, and releasing the
lock sends them as ONE call (checked with ``PgLedger.batching``). Then:

- two pools and two processes racing a cap end exactly at the cap, no deadlock;
- one batch mixing ok / over-cap / duplicate items gives each its own outcome,
  names the tightest tier, and reserves nothing for the refused ones;
- a reservation id twice in one batch: the second waits for the first's outcome;
- a batch whose connection is cut (request lost, or reply lost after the server
  acted) fails every waiter with ``ledger.unavailable`` and leaves all or nothing;
- a batch aborted by a deadlock is retried whole and charges each item once;
- settlement batches: late, missing and repeated items, the 80 % warning once.

Run as a script (``python tests/test_ledger_batching.py worker CONFIG``), this file is
the worker of the two-process race (as in test_ledger_race.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- worker (child process)


async def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    from supervisor.errors import StockadeError
    from supervisor.stores.postgres.db import open_postgres
    from supervisor.stores.postgres.ledger import PgLedger

    db = await open_postgres(cfg["url"], min_size=4, max_size=4, migrate=False)
    ledger = PgLedger(db)
    t = cfg["tenant"]
    counts: dict[str, int] = {}
    try:
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        assert line.strip() == "go", line

        async def client(c: int) -> None:
            for n in range(cfg["per_client"]):
                rid = f"rsv_{cfg['name']}_{c}_{n}"
                scopes = [("tenant", t), ("user", f"usr_{(c + n) % 3}")]
                now = time.time()
                try:
                    await ledger.reserve(t, scopes, cfg["price"], reservation_id=rid, run_id="run_w",
                                         expires_at=now + 300, now=now)
                except StockadeError as exc:
                    counts[exc.code] = counts.get(exc.code, 0) + 1
                    continue
                await ledger.commit(t, rid, cfg["price"], tool="echo", now=time.time())
                counts["ok"] = counts.get("ok", 0) + 1

        await asyncio.gather(*(client(c) for c in range(cfg["clients"])))
    finally:
        await db.close()
    return {"counts": counts, "batching": ledger.batching}


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(asyncio.run(_worker(json.loads(sys.argv[2])))), flush=True)
    sys.exit(0)


# --------------------------------------------------------------------------- the tests

import asyncpg  # noqa: E402
import pytest  # noqa: E402

from supervisor.errors import StockadeError  # noqa: E402
from supervisor.stores.postgres.db import PgDB, open_postgres  # noqa: E402
from supervisor.stores.postgres.ledger import PgLedger  # noqa: E402
from tests._processes import release_together  # noqa: E402
from tests.fakes.pg_fault_proxy import FaultProxy  # noqa: E402

pytestmark = pytest.mark.timeout(90)
T = "ten_batch"
NOW = time.time()
FAR = NOW + 3600


@pytest.fixture
async def env(fresh_pg_url: str):
    db = await open_postgres(fresh_pg_url, min_size=1, max_size=6)  # migrates the fresh database
    async with db.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'batch', 0)", T)
    try:
        yield fresh_pg_url, db, PgLedger(db)
    finally:
        await db.close()


async def until(cond: Callable[[], bool]) -> None:
    """Yield to the event loop (no timed sleep) until ``cond()``: the tasks started run up to their first wait."""
    for _ in range(10_000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


@asynccontextmanager
async def row_locked(url: str, sql: str, args: tuple[Any, ...]) -> AsyncIterator[asyncpg.Connection]:
    """Another transaction holds ``sql``'s row locks (FOR UPDATE) until the block ends."""
    conn = await asyncpg.connect(url)
    tx = conn.transaction()
    await tx.start()
    try:
        assert await conn.fetch(sql, *args), "nothing to lock"
        yield conn
    finally:
        await tx.rollback()
        await conn.close()


def reserve(ledger: PgLedger, rid: str, amount: int, scopes: list[tuple[str, str]], *, now: float = NOW) -> Any:
    return ledger.reserve(T, scopes, amount, reservation_id=rid, run_id="run_b", expires_at=FAR, now=now)


async def one_batch(ledger: PgLedger, op: str, url: str, lock_sql: str, lock_args: tuple[Any, ...],
                    first: Callable[[], Any], rest: list[Callable[[], Any]], calls: int = 1) -> tuple[Any, list[Any]]:
    """Run ``first`` alone while a row lock holds it, queue ``rest`` behind it, then let go: ``rest`` is one call
    (or ``calls``)."""
    coalescer = ledger._reserves if op == "reserve" else ledger._commits
    async with row_locked(url, lock_sql, lock_args):
        lead = asyncio.ensure_future(first())
        await until(lambda: coalescer.busy)
        before = ledger.batching
        tasks = [asyncio.ensure_future(f()) for f in rest]
        await until(lambda: sum(len(q) for q in coalescer._queues.values()) == len(rest))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    lead_outcome = await asyncio.gather(lead, return_exceptions=True)
    after = ledger.batching
    assert (after[f"{op}_calls"] - before[f"{op}_calls"], after[f"{op}_items"] - before[f"{op}_items"]) == (calls, len(rest))
    return lead_outcome[0], outcomes


TENANT_ROW = ("SELECT 1 FROM budget_account_holds WHERE tenant_id = $1 AND scope = 'tenant' FOR UPDATE", (T,))


async def held_of(db: PgDB) -> dict[tuple[str, str], tuple[int, int]]:
    """(spent, reserved) per tier. Every tier is metered on its month and its lifetime row (0043); all of
    these tests run in one month, so the two must agree."""
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT scope, scope_id, period_key, spent_micro, reserved_micro FROM budget_accounts"
                                " WHERE tenant_id = $1", T)
    out: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for r in rows:
        out.setdefault((r["scope"], r["scope_id"]), set()).add((r["spent_micro"], r["reserved_micro"]))
    assert all(len(v) == 1 for v in out.values()), out
    assert sum(r["period_key"] == "lifetime" for r in rows) * 2 == len(rows), rows  # a month row for each lifetime one
    return {k: v.pop() for k, v in out.items()}


async def assert_consistent(db: PgDB) -> None:
    """Every account equals the sum of the charges of the settled reservations holding it (spent) and of its
    held reservations (reserved); a settlement has one entry per tier (a reservation holds two rows per tier),
    of its charge, on one of its rows."""
    async with db.acquire() as conn:
        rows = await conn.fetch(
            """SELECT a.id, a.spent_micro, a.reserved_micro,
                      (SELECT coalesce(sum(r.charged_micro), 0) FROM budget_reservations r
                        WHERE r.state = 'committed' AND a.id = ANY (r.account_ids)) AS charged,
                      (SELECT coalesce(sum(r.amount_micro), 0) FROM budget_reservations r
                        WHERE r.state = 'held' AND a.id = ANY (r.account_ids)) AS held
                 FROM budget_accounts a""")
        settled = await conn.fetch(
            """SELECT r.id, r.charged_micro, cardinality(r.account_ids) AS rows,
                      (SELECT count(*) FROM ledger_entries e WHERE e.tenant_id = r.tenant_id AND e.reservation_id = r.id
                          AND e.amount_micro = r.charged_micro AND e.account_id = ANY (r.account_ids)) AS n,
                      (SELECT count(*) FROM ledger_entries e WHERE e.tenant_id = r.tenant_id AND e.reservation_id = r.id) AS all_n
                 FROM budget_reservations r WHERE r.state = 'committed'""")
    assert rows
    for r in rows:
        assert (r["spent_micro"], r["reserved_micro"]) == (r["charged"], r["held"]), dict(r)
    for r in settled:
        assert r["rows"] % 2 == 0 and r["n"] == r["all_n"] == (r["rows"] // 2 if r["charged_micro"] else 0), dict(r)


# --------------------------------------------------------------------------- reserve batches


async def test_one_batch_mixes_ok_exceeded_and_duplicate_items(env):
    url, db, ledger = env
    await ledger.set_cap(T, "tenant", T, 10_000)
    await ledger.set_cap(T, "user", "usr_1", 1_500)
    await ledger.set_cap(T, "user", "usr_2", 5_000)
    await ledger.set_cap(T, "user", "usr_4", 100)
    await reserve(ledger, "rsv_old", 100, [("tenant", T)])
    items = [  # (id, amount, user) in queue order; the tenant tier is on every item
        ("rsv_1", 1_000, "usr_1"),   # ok: usr_1 500 left, tenant 8,800
        ("rsv_2", 1_000, "usr_1"),   # usr_1 refuses (500 left), nothing reserved
        ("rsv_3", 4_000, "usr_2"),   # ok: usr_2 1,000 left, tenant 4,800
        ("rsv_4", 6_000, "usr_3"),   # the tenant refuses (4,800 left)
        ("rsv_5", 1_000, "usr_2"),   # ok: usr_2 0 left, tenant 3,800
        ("rsv_6", 1, "usr_2"),       # usr_2 refuses (0 left)
        ("rsv_old", 5, "usr_3"),     # duplicate of an earlier reservation
        ("rsv_8", 500, "usr_1"),     # ok: exactly usr_1's last 500, tenant 3,300
        ("rsv_9", 5_000, "usr_4"),   # tenant (3,300) and usr_4 (100) both refuse: the tightest is named
    ]
    lead, outs = await one_batch(
        ledger, "reserve", url, *TENANT_ROW,
        lambda: reserve(ledger, "rsv_lead", 100, [("tenant", T)]),
        [lambda i=i: reserve(ledger, i[0], i[1], [("tenant", T), ("user", i[2])]) for i in items])
    assert lead.state == "held"
    got = [(o.code, o.extra.get("tier"), o.extra.get("scope_id"), o.extra.get("remaining_usd"))
           if isinstance(o, StockadeError) else "ok" for o in outs]
    assert got == [
        "ok",
        ("budget.exceeded", "user", "usr_1", 0.0005),
        "ok",
        ("budget.exceeded", "tenant", T, 0.0048),
        "ok",
        ("budget.exceeded", "user", "usr_2", 0.0),
        ("conflict", None, None, None),
        "ok",
        ("budget.exceeded", "user", "usr_4", 0.0001),
    ]
    acc = await held_of(db)
    assert acc[("tenant", T)] == (0, 100 + 100 + 1_000 + 4_000 + 1_000 + 500)
    assert acc[("user", "usr_1")] == (0, 1_500) and acc[("user", "usr_2")] == (0, 5_000)
    assert acc[("user", "usr_3")] == (0, 0) and acc[("user", "usr_4")] == (0, 0)
    async with db.acquire() as conn:
        ids = {r[0] for r in await conn.fetch("SELECT id FROM budget_reservations WHERE tenant_id = $1", T)}
    assert ids == {"rsv_old", "rsv_lead", "rsv_1", "rsv_3", "rsv_5", "rsv_8"}  # nothing for a refused item
    await assert_consistent(db)


async def test_a_batch_that_all_fits_reserves_every_item_once(env):
    url, db, ledger = env
    await ledger.set_cap(T, "tenant", T, 1_000)
    await reserve(ledger, "rsv_warm", 0, [("tenant", T), ("user", "usr_0")])
    _, outs = await one_batch(
        ledger, "reserve", url, *TENANT_ROW,
        lambda: reserve(ledger, "rsv_lead", 100, [("tenant", T)]),
        [lambda i=i: reserve(ledger, f"rsv_{i}", 100, [("tenant", T), ("user", f"usr_{i % 3}")]) for i in range(9)])
    assert all(o.state == "held" for o in outs)  # 100 + 9 * 100 = the cap exactly
    acc = await held_of(db)
    assert acc[("tenant", T)] == (0, 1_000) and acc[("user", "usr_0")] == (0, 300)
    with pytest.raises(StockadeError) as err:
        await reserve(ledger, "rsv_more", 1, [("tenant", T)])
    assert err.value.code == "budget.exceeded"
    await assert_consistent(db)


async def test_the_same_id_twice_in_a_batch_waits_for_the_first(env):
    url, db, ledger = env
    await ledger.set_cap(T, "tenant", T, 10_000)
    await reserve(ledger, "rsv_warm", 0, [("tenant", T)])
    _, outs = await one_batch(
        ledger, "reserve", url, *TENANT_ROW,
        lambda: reserve(ledger, "rsv_lead", 1, [("tenant", T)]),
        [lambda: reserve(ledger, "rsv_x", 700, [("tenant", T)]),
         lambda: reserve(ledger, "rsv_y", 1, [("tenant", T)]),
         lambda: reserve(ledger, "rsv_x", 900, [("tenant", T)])],  # same id: waits for the next call
        calls=2)
    assert outs[0].amount_micro == 700 and outs[1].state == "held"
    assert isinstance(outs[2], StockadeError) and outs[2].code == "conflict"
    assert await held_of(db) == {("tenant", T): (0, 702)}
    # The database refuses a batch naming one id twice, whoever sends it, and changes nothing.
    async with db.acquire() as conn:
        with pytest.raises(asyncpg.InvalidParameterValueError):
            await conn.fetch(
                "SELECT * FROM stockade_ledger_reserve_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                T, ["rsv_z", "rsv_z"], [None, None], [5, 5], ["2026-01"] * 2, [FAR] * 2, [NOW] * 2,
                [1, 2], ["tenant", "tenant"], [T, T])
        with pytest.raises(asyncpg.InvalidParameterValueError):
            await conn.fetch("SELECT * FROM stockade_ledger_commit_batch($1, $2, $3, $4, $5)",
                             T, ["rsv_x", "rsv_x"], [1, 1], [None, None], [NOW, NOW])
    assert await held_of(db) == {("tenant", T): (0, 702)}
    await assert_consistent(db)


async def test_a_waiter_cancelled_before_its_batch_leaves_never_runs(env):
    url, db, ledger = env
    await reserve(ledger, "rsv_warm", 0, [("tenant", T)])
    async with row_locked(url, *TENANT_ROW):
        lead = asyncio.ensure_future(reserve(ledger, "rsv_lead", 1, [("tenant", T)]))
        await until(lambda: ledger._reserves.busy)
        gone = asyncio.ensure_future(reserve(ledger, "rsv_gone", 50, [("tenant", T)]))
        kept = asyncio.ensure_future(reserve(ledger, "rsv_kept", 7, [("tenant", T)]))
        await until(lambda: len(ledger._reserves._queues[T]) == 2)
        gone.cancel()
    assert (await kept).amount_micro == 7 and (await lead).amount_micro == 1
    assert gone.cancelled()
    assert await held_of(db) == {("tenant", T): (0, 8)}


async def test_two_pools_race_one_cap_exactly_to_the_cap(env):
    url, db, ledger = env
    other = await open_postgres(url, min_size=1, max_size=4, migrate=False)
    try:
        ledger2 = PgLedger(other)
        price, fit = 700, 23
        await ledger.set_cap(T, "tenant", T, price * fit)
        await ledger.set_cap(T, "user", "usr_0", price * 5)  # binds first for usr_0
        go = asyncio.Event()
        results: list[str] = []

        async def client(c: int) -> None:
            await go.wait()
            lg = ledger if c % 2 else ledger2
            for n in range(6):
                rid = f"rsv_{c}_{n}"
                try:
                    await reserve(lg, rid, price, [("tenant", T), ("user", f"usr_{c % 4}")])
                except StockadeError as exc:
                    results.append(exc.code)
                    continue
                await lg.commit(T, rid, price, tool="echo", now=NOW)
                results.append("ok")

        tasks = [asyncio.ensure_future(client(c)) for c in range(16)]
        go.set()
        await asyncio.gather(*tasks)
        assert sorted(set(results)) == ["budget.exceeded", "ok"] and results.count("ok") == fit
        acc = await held_of(db)
        assert acc[("tenant", T)] == (price * fit, 0)  # exactly the cap, nothing left held
        assert acc[("user", "usr_0")][0] <= price * 5
        for lg in (ledger, ledger2):  # both pools really batched, and no call deadlocked (none was retried)
            b = lg.batching
            assert b["reserve_items"] > b["reserve_calls"] and b["commit_items"] > b["commit_calls"], b
            assert b["retries"] == 0, b
        await assert_consistent(db)
    finally:
        await other.close()


def _spawn(cfg: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "worker", json.dumps(cfg)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )


def _race(cfgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    procs = [_spawn(cfg) for cfg in cfgs]
    return release_together(procs, timeout=60)


async def test_two_processes_batching_race_one_cap_exactly_to_the_cap(env):
    url, db, ledger = env
    price, fit = 1_000, 41
    await ledger.set_cap(T, "tenant", T, price * fit)
    await ledger.set_cap(T, "user", "usr_1", price * 9)
    cfgs = [{"url": url, "tenant": T, "price": price, "clients": 12, "per_client": 6, "name": name} for name in "ab"]
    results = await asyncio.to_thread(_race, cfgs)
    counts = [r["counts"] for r in results]
    assert all(set(c) <= {"ok", "budget.exceeded"} for c in counts), counts  # no other error of any kind
    assert sum(c.get("ok", 0) for c in counts) == fit
    for r in results:  # both processes really batched, and no call deadlocked (none was retried)
        b = r["batching"]
        assert b["reserve_items"] > b["reserve_calls"] and b["commit_items"] > b["commit_calls"] and b["retries"] == 0, b
    acc = await held_of(db)
    assert acc[("tenant", T)] == (price * fit, 0)
    assert acc[("user", "usr_1")][0] <= price * 9
    await assert_consistent(db)


async def test_a_deadlocked_batch_is_retried_whole_and_charges_each_item_once(env):
    url, db, ledger = env
    await reserve(ledger, "rsv_warm", 0, [("tenant", T), ("user", "usr_1")])
    async with db.acquire() as conn:
        ids = dict(await conn.fetch("SELECT scope, id FROM budget_account_holds WHERE tenant_id = $1 AND period_key <> 'lifetime'", T))
    assert ids["tenant"] < ids["user"]  # a batch locks the tenant row first, then the user row
    x = await asyncpg.connect(url)  # the other party of the deadlock; it waits long, so the batch is the victim
    try:
        await x.execute("BEGIN; SET LOCAL deadlock_timeout = '30s'")
        async with row_locked(url, *TENANT_ROW):
            lead = asyncio.ensure_future(reserve(ledger, "rsv_lead", 1, [("tenant", T)]))
            await until(lambda: ledger._reserves.busy)
            tasks = [asyncio.ensure_future(reserve(ledger, f"rsv_{i}", 10, [("tenant", T), ("user", "usr_1")]))
                     for i in range(5)]
            await until(lambda: len(ledger._reserves._queues[T]) == 5)
            await x.fetch("SELECT 1 FROM budget_account_holds WHERE id = $1 FOR UPDATE", ids["user"])
        await lead  # the tenant row is free: the batch locks it, then waits for x on the user row
        probe = await asyncpg.connect(url)
        try:
            for _ in range(400):  # another server's state: poll, bounded (~20 s)
                if await probe.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                        " AND query LIKE '%stockade_ledger_reserve_batch%'"):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the batch never waited on the user row")
        finally:
            await probe.close()
        # x now wants the tenant row the batch holds: a deadlock. PostgreSQL aborts the batch (its
        # deadlock_timeout expires first); x gets the row; PgLedger retries the batch, which waits for x.
        await x.fetch("SELECT 1 FROM budget_account_holds WHERE id = $1 FOR UPDATE", ids["tenant"])
        await x.execute("COMMIT")
        outs = await asyncio.gather(*tasks)
    finally:
        await x.close()
    assert [o.state for o in outs] == ["held"] * 5
    assert await held_of(db) == {("tenant", T): (0, 51), ("user", "usr_1"): (0, 50)}  # once each, not twice
    # the deadlock really happened, and the retry path ran (seen once in CI, on a loaded machine: retries == 2,
    # cause not identified; what the test is about is the charge above, exactly once each)
    assert ledger.batching["retries"] >= 1
    await assert_consistent(db)


# --------------------------------------------------------------------------- settlement batches


async def test_a_settlement_batch_settles_late_missing_and_repeated_items_each_its_own_way(env):
    url, db, ledger = env
    await ledger.set_cap(T, "tenant", T, 1_000)
    scopes = [("tenant", T), ("user", "usr_1")]
    for rid, amount in (("rsv_lead", 100), ("rsv_a", 300), ("rsv_b", 200), ("rsv_late", 300), ("rsv_done", 50)):
        await reserve(ledger, rid, amount, scopes)
    first = await ledger.commit(T, "rsv_done", 50, tool="echo", now=NOW)
    await ledger.release(T, "rsv_late")
    await reserve(ledger, "rsv_c", 150, scopes)  # the released room is used again
    lead, outs = await one_batch(
        ledger, "commit", url,
        "SELECT 1 FROM budget_reservations WHERE tenant_id = $1 AND id = 'rsv_lead' FOR UPDATE", (T,),
        lambda: ledger.commit(T, "rsv_lead", 100, tool="echo", now=NOW),
        [lambda: ledger.commit(T, "rsv_a", 250, tool="llm", now=NOW + 1),      # charged 250, 50 released
         lambda: ledger.commit(T, "rsv_missing", 1, tool="x", now=NOW),        # not_found
         lambda: ledger.commit(T, "rsv_late", 400, tool="slow", now=NOW + 2),  # late: only what still fits
         lambda: ledger.commit(T, "rsv_done", 999, tool="echo", now=NOW + 3),  # a repeat: the first entries
         lambda: ledger.commit(T, "rsv_b", 500, tool="llm", now=NOW + 4)])     # charged the reserved 200
    assert [e.amount_micro for e in lead] == [100, 100]
    a, missing, late, repeat, b = outs
    assert sorted((e.scope, e.amount_micro, e.tool, e.ts) for e in a) == [("tenant", 250, "llm", NOW + 1),
                                                                           ("user", 250, "llm", NOW + 1)]
    assert isinstance(missing, StockadeError) and missing.code == "not_found"
    assert repeat == first
    assert [e.amount_micro for e in b] == [200, 200] and b[0].detail["overage_micro"] == 300
    # Settled after the batch (it needs the hold locks): 1,000 - spent 600 - held 150 = 250 of its 300 fit.
    assert [e.amount_micro for e in late] == [250, 250] and all(e.detail["late"] for e in late)
    assert late[0].detail["unbilled_micro"] == 50
    acc = await held_of(db)
    assert acc[("tenant", T)] == (50 + 100 + 250 + 200 + 250, 150)  # rsv_c still held
    assert acc[("tenant", T)][0] + acc[("tenant", T)][1] <= 1_000
    await assert_consistent(db)


async def test_the_80_percent_warning_goes_once_to_the_first_item_that_crosses_it(env):
    url, db, ledger = env
    await ledger.set_cap(T, "tenant", T, 1_000)
    amounts = [150] * 6 + [50]
    for i, amount in enumerate(amounts):
        await reserve(ledger, f"rsv_{i}", amount, [("tenant", T)])
    await reserve(ledger, "rsv_lead", 10, [("tenant", T)])
    lead, outs = await one_batch(
        ledger, "commit", url,
        "SELECT 1 FROM budget_reservations WHERE tenant_id = $1 AND id = 'rsv_lead' FOR UPDATE", (T,),
        lambda: ledger.commit(T, "rsv_lead", 10, tool="echo", now=NOW),
        [lambda i=i: ledger.commit(T, f"rsv_{i}", amounts[i], tool="echo", now=NOW) for i in range(len(amounts))])
    spent = [e[0].detail["spent_micro"] for e in outs]
    assert spent == [160, 310, 460, 610, 760, 910, 960]  # the details count the items before them
    # 910 crosses 80 % first; 960 is past it too, but the tier has been warned already (same batch)
    assert [e[0].detail.get("warning_pct") for e in outs] == [None, None, None, None, None, 80, None]
    assert [e[0].detail["remaining_micro"] for e in outs] == [40] * 7  # cap - spent - still reserved
    r = await reserve(ledger, "rsv_after", 30, [("tenant", T)])
    [after] = await ledger.commit(T, r.id, 30, tool="echo", now=NOW)
    assert "warning_pct" not in after.detail  # once per tier per period
    await assert_consistent(db)


# --------------------------------------------------------------------------- a cut connection


@pytest.fixture
async def via_proxy(env):
    url, db, _ = env
    proxy = await FaultProxy().start()
    via = await open_postgres(proxy.url(url.rsplit("/", 1)[1]), min_size=1, max_size=4, migrate=False)
    try:
        yield url, db, PgLedger(via), proxy
    finally:
        await via.close()
        await proxy.close()


async def _reserved(db: PgDB) -> dict[str, str]:
    async with db.acquire() as conn:
        return dict(await conn.fetch("SELECT id, state FROM budget_reservations WHERE tenant_id = $1", T))


@pytest.mark.parametrize("where", ["request_lost", "reply_lost"])
async def test_a_cut_reserve_batch_fails_every_waiter_closed_and_is_all_or_nothing(via_proxy, where):
    url, db, ledger, proxy = via_proxy
    await ledger.set_cap(T, "tenant", T, 100_000)
    await reserve(ledger, "rsv_warm", 0, [("tenant", T), ("user", "usr_0")])
    if where == "request_lost":  # the batch function's statement never reaches the server
        proxy.cut_when("to_server", lambda chunk: b"stockade_ledger_reserve_batch" in chunk)
    else:  # the server committed the batch; its first result row (item 1, 'ok') never arrives
        proxy.cut_when("to_client", lambda chunk: b"\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x02ok" in chunk)
    _, outs = await one_batch(
        ledger, "reserve", url, *TENANT_ROW,
        lambda: reserve(ledger, "rsv_lead", 1, [("tenant", T)]),
        [lambda i=i: reserve(ledger, f"rsv_{i}", 100, [("tenant", T), ("user", f"usr_{i % 2}")]) for i in range(6)])
    assert proxy.fired.is_set()
    assert all(isinstance(o, StockadeError) and o.code == "ledger.unavailable" for o in outs), outs
    proxy.restore()
    rows = await _reserved(db)
    batch = {f"rsv_{i}" for i in range(6)}
    assert batch.isdisjoint(rows) if where == "request_lost" else batch <= set(rows)  # none, or every one whole
    await assert_consistent(db)
    await ledger.sweep(FAR + 1)  # the sweeper releases what a lost reply left held
    acc = await held_of(db)
    assert acc[("tenant", T)] == (0, 0) and acc[("user", "usr_0")] == (0, 0)
    await assert_consistent(db)


@pytest.mark.parametrize("where", ["request_lost", "reply_lost"])
async def test_a_cut_settlement_batch_fails_every_waiter_closed_and_a_retry_charges_once(via_proxy, where):
    url, db, ledger, proxy = via_proxy
    scopes = [("tenant", T), ("user", "usr_1")]
    for i in range(5):
        await reserve(ledger, f"rsv_{i}", 100, scopes)
    await reserve(ledger, "rsv_lead", 1, scopes)
    if where == "request_lost":
        proxy.cut_when("to_server", lambda chunk: b"stockade_ledger_commit_batch" in chunk)
    else:  # the first 'settled' row of the batch's reply (item 1) never arrives
        proxy.cut_when("to_client", lambda chunk: b"\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x07settled" in chunk)
    _, outs = await one_batch(
        ledger, "commit", url,
        "SELECT 1 FROM budget_reservations WHERE tenant_id = $1 AND id = 'rsv_lead' FOR UPDATE", (T,),
        lambda: ledger.commit(T, "rsv_lead", 1, tool="echo", now=NOW),
        [lambda i=i: ledger.commit(T, f"rsv_{i}", 60 + i, tool="echo", now=NOW) for i in range(5)])
    assert proxy.fired.is_set()
    assert all(isinstance(o, StockadeError) and o.code == "ledger.unavailable" for o in outs), outs
    proxy.restore()
    states = {k: v for k, v in (await _reserved(db)).items() if k != "rsv_lead"}
    assert set(states.values()) == ({"held"} if where == "request_lost" else {"committed"})  # all or nothing
    await assert_consistent(db)
    retried = await asyncio.gather(*(ledger.commit(T, f"rsv_{i}", 60 + i, tool="echo", now=NOW) for i in range(5)))
    assert [sorted(e.amount_micro for e in es) for es in retried] == [[60 + i, 60 + i] for i in range(5)]
    acc = await held_of(db)
    assert acc[("tenant", T)] == (1 + sum(60 + i for i in range(5)), 0)  # charged once, not twice
    await assert_consistent(db)
