"""200 reservations racing a cap from two OS processes, each with its own asyncpg pool, on real PostgreSQL.

Proves invariant 4 (no overspend under any concurrency, across nodes) and the
FACTS.md deadlock pitfall is avoided: committed spend equals the cap exactly,
never more, and ``pg_stat_database.deadlocks`` does not move.

Run as a script (``python tests/test_ledger_race.py worker CONFIG``), this file is
the worker: it opens its own pool, says ``ready``, waits for ``go`` on stdin (a
barrier, no sleeps) and races its share of the reservations.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRICE = 1_000  # micro-USD per call


# --------------------------------------------------------------------------- worker (child process)


async def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    from supervisor.errors import StockadeError
    from supervisor.stores.postgres.db import open_postgres
    from supervisor.stores.postgres.ledger import PgLedger

    db = await open_postgres(cfg["url"], min_size=cfg["pool"], max_size=cfg["pool"], migrate=False)
    ledger = PgLedger(db)
    tenant = cfg["tenant"]
    counts: dict[str, int] = {"ok": 0, "exceeded": 0}
    committed: list[list[Any]] = []
    try:
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        assert line.strip() == "go", line

        async def one(i: int) -> None:
            scopes = [tuple(s) for s in cfg["scopes"][i % len(cfg["scopes"])]]
            rid = f"rsv_{cfg['name']}_{i}"
            now = time.time()
            try:
                await ledger.reserve(tenant, scopes, PRICE, reservation_id=rid, run_id=f"run_{cfg['name']}",
                                     expires_at=now + 300, now=now)
            except StockadeError as exc:
                key = "exceeded" if exc.code == "budget.exceeded" else f"error:{exc.code}"
                counts[key] = counts.get(key, 0) + 1
                return
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
                counts[f"error:{type(exc).__name__}"] = counts.get(f"error:{type(exc).__name__}", 0) + 1
                return
            entries = await ledger.commit(tenant, rid, PRICE, tool="echo", now=time.time())
            counts["ok"] += 1
            committed.append([rid, [[e.scope, e.scope_id, e.amount_micro] for e in entries]])

        await asyncio.gather(*(one(i) for i in range(cfg["n"])))
    finally:
        await db.close()
    return {"counts": counts, "committed": committed}


def _worker_main(raw: str) -> None:
    sys.path.insert(0, str(ROOT))
    print(json.dumps(asyncio.run(_worker(json.loads(raw)))), flush=True)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    _worker_main(sys.argv[2])
    sys.exit(0)


# --------------------------------------------------------------------------- the tests (parent)

import asyncpg  # noqa: E402
import pytest  # noqa: E402

from supervisor.stores.postgres.db import open_postgres  # noqa: E402
from supervisor.stores.postgres.ledger import PgLedger  # noqa: E402
from tests._processes import release_together  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _spawn(cfg: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "worker", json.dumps(cfg)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )


def _race(url: str, tenant: str, scopes: list[list[list[str]]], n_total: int = 200) -> list[dict[str, Any]]:
    """Start two worker processes, release them together, collect their results."""
    procs = [_spawn({"url": url, "tenant": tenant, "scopes": scopes, "n": n_total // 2, "pool": 8, "name": name})
             for name in ("a", "b")]
    return release_together(procs, timeout=90)


async def _deadlocks(url: str, keep_pids: tuple[int, ...] | None = None) -> int:
    conn = await asyncpg.connect(url)
    try:
        if keep_pids is not None:
            # Backends flush their statistics when they exit: wait (bounded) until every backend
            # but ours (the test's own pool) has gone.
            # Another server's state: there is no event to wait on, so poll, bounded to ~10 s.
            for _ in range(200):
                if not await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND pid <> ALL($1::int[])", list(keep_pids),
                ):
                    break
                await asyncio.sleep(0.05)
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(await conn.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"))
    finally:
        await conn.close()


@pytest.fixture
async def pg(fresh_pg_url: str):
    # One connection exactly, so that its pid is the only one of ours (see _deadlocks).
    db = await open_postgres(fresh_pg_url, min_size=1, max_size=1)  # migrates the fresh database
    try:
        async with db.acquire() as conn:
            await conn.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_race', 'race', 0)")
            pid = conn.get_server_pid()
        yield fresh_pg_url, PgLedger(db), (pid,)
    finally:
        await db.close()


def _spent(accounts: list[Any]) -> dict[tuple[str, str], tuple[int, int]]:
    return {(a.scope, a.scope_id): (a.spent_micro, a.reserved_micro) for a in accounts}


async def _entry_totals(ledger: PgLedger, tenant: str) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    after = 0
    while page := await ledger.entries(tenant, after_id=after, limit=1000):
        for e in page:
            totals[(e.scope, e.scope_id)] = totals.get((e.scope, e.scope_id), 0) + e.amount_micro
        after = page[-1].id
    return totals


async def test_two_processes_race_one_cap_exactly_to_the_cap(pg):
    url, ledger, mine = pg
    cap_calls = 37
    await ledger.set_cap("ten_race", "tenant", "ten_race", cap_calls * PRICE)
    before = await _deadlocks(url)
    results = await asyncio.to_thread(_race, url, "ten_race", [[["tenant", "ten_race"]]])
    after = await _deadlocks(url, mine)

    counts = [r["counts"] for r in results]
    assert all(set(c) == {"ok", "exceeded"} for c in counts), counts  # no error of any other kind
    assert sum(c["ok"] for c in counts) == cap_calls
    assert sum(c["ok"] + c["exceeded"] for c in counts) == 200
    assert all(c["ok"] > 0 for c in counts), counts  # both processes really raced
    [acct] = await ledger.accounts("ten_race", time.time())
    assert (acct.spent_micro, acct.reserved_micro) == (cap_calls * PRICE, 0)  # exactly the cap, nothing held
    assert await _entry_totals(ledger, "ten_race") == {("tenant", "ten_race"): cap_calls * PRICE}
    assert after - before == 0, f"{after - before} deadlocks"


async def test_three_tiers_project_and_user_caps_bind(pg):
    url, ledger, mine = pg
    t = "ten_race"
    await ledger.set_cap(t, "tenant", t, 1_000 * PRICE)  # never binding
    await ledger.set_cap(t, "project", "prj_p", 25 * PRICE)
    await ledger.set_cap(t, "user", "usr_1", 10 * PRICE)
    await ledger.set_cap(t, "user", "usr_2", 100 * PRICE)
    await ledger.set_cap(t, "user", "usr_3", 7 * PRICE)  # in project prj_q, which has no cap
    scopes = [
        [["tenant", t], ["project", "prj_p"], ["user", "usr_1"]],
        [["tenant", t], ["project", "prj_p"], ["user", "usr_2"]],
        [["tenant", t], ["project", "prj_q"], ["user", "usr_3"]],
    ]
    before = await _deadlocks(url)
    results = await asyncio.to_thread(_race, url, t, scopes)
    after = await _deadlocks(url, mine)

    counts = [r["counts"] for r in results]
    assert all(set(c) == {"ok", "exceeded"} for c in counts), counts
    assert sum(c["ok"] for c in counts) == 25 + 7
    acc = _spent(await ledger.accounts(t, time.time()))
    assert acc[("project", "prj_p")] == (25 * PRICE, 0)  # the project cap binds exactly
    assert acc[("user", "usr_3")] == (7 * PRICE, 0)  # the user cap binds exactly
    u1, u2 = acc[("user", "usr_1")][0], acc[("user", "usr_2")][0]
    assert u1 <= 10 * PRICE and u1 + u2 == 25 * PRICE
    assert acc[("tenant", t)] == (32 * PRICE, 0)
    totals = await _entry_totals(ledger, t)
    assert totals[("project", "prj_q")] == 7 * PRICE  # the uncapped tier is metered too
    assert {k: v for k, v in totals.items() if k in acc} == {k: v[0] for k, v in acc.items()}
    assert after - before == 0, f"{after - before} deadlocks"
