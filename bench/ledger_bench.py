"""Budget reserve + commit on PostgreSQL (PgLedger, 3 tiers): p50/p99 latency and pairs/s.

Three scenarios of ~2 s each (bounded to under 10 s overall): 1 client; 16 clients on
one hot tenant (every pair locks the same tenant and project rows); 16 clients on
disjoint tenants. Works in a throw-away database it creates and drops. Runs on uvloop,
as every Stockade process does (app/server.py); ``--loop asyncio`` for the plain loop.
"batch" is the mean number of calls PgLedger coalesced into one stored-function call.
    python bench/ledger_bench.py [--url postgresql://postgres@127.0.0.1:5432/postgres] [--seconds 2]
Goal (issue 6): 1 client p50 <= 2 ms; one hot tenant >= 1,000 pairs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from supervisor.stores.postgres.db import open_postgres  # noqa: E402
from supervisor.stores.postgres.ledger import PgLedger  # noqa: E402

PRICE = 1_000


async def run(ledger: PgLedger, clients: int, tenants: list[str], seconds: float) -> dict[str, float]:
    before = ledger.batching
    pair: list[float] = []
    res_lat: list[float] = []
    com_lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def one(i: int) -> None:
        t = tenants[i % len(tenants)]
        scopes = [("tenant", t), ("project", f"prj_{t}"), ("user", f"usr_{i}")]
        n = 0
        while time.perf_counter() < stop:
            rid = f"rsv_{i}_{n}_{secrets.token_hex(3)}"
            n += 1
            t0 = time.perf_counter()
            now = time.time()
            await ledger.reserve(t, scopes, PRICE, reservation_id=rid, run_id="run_bench", expires_at=now + 60, now=now)
            t1 = time.perf_counter()
            await ledger.commit(t, rid, PRICE // 2, tool="echo", now=now)
            t2 = time.perf_counter()
            res_lat.append(t1 - t0)
            com_lat.append(t2 - t1)
            pair.append(t2 - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0

    def pct(xs: list[float], q: float) -> float:
        return statistics.quantiles(xs, n=100)[q - 1] * 1000 if len(xs) > 1 else float("nan")

    after = ledger.batching

    def mean_batch(op: str) -> float:
        calls = after[f"{op}_calls"] - before[f"{op}_calls"]
        return (after[f"{op}_items"] - before[f"{op}_items"]) / calls if calls else float("nan")

    return {"pairs": len(pair), "per_s": len(pair) / elapsed, "p50": statistics.median(pair) * 1000,
            "p99": pct(pair, 99), "reserve_p50": statistics.median(res_lat) * 1000,
            "commit_p50": statistics.median(com_lat) * 1000, "batch": (mean_batch("reserve") + mean_batch("commit")) / 2}


async def main(args: argparse.Namespace) -> None:
    seconds = min(args.seconds, 2.5)  # 3 scenarios + set-up stay under 10 s
    parts = urlsplit(args.url)
    name = f"stockade_ledger_bench_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(args.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        db = await open_postgres(urlunsplit((parts.scheme, parts.netloc, "/" + name, "", "")), min_size=16, max_size=16)
        try:
            ledger = PgLedger(db)
            tenants = [f"ten_bench_{i}" for i in range(16)]
            async with db.acquire() as conn:
                await conn.executemany("INSERT INTO tenants (id, name, created_at) VALUES ($1, $1, 0)",
                                       [(t,) for t in tenants])
            for t in tenants:
                await ledger.set_cap(t, "tenant", t, 10**15)
                await ledger.set_cap(t, "project", f"prj_{t}", 10**15)
            await run(ledger, 16, tenants, 0.2)  # warm-up: connections, prepared statements, account rows
            print(f"{'scenario':<34}{'pairs/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'reserve p50':>13}{'commit p50':>12}"
                  f"{'batch':>7}")
            for label, clients, ts in (("1 client", 1, tenants[:1]),
                                       ("16 clients, one hot tenant", 16, tenants[:1]),
                                       ("16 clients, 16 disjoint tenants", 16, tenants)):
                r = await run(ledger, clients, ts, seconds)
                print(f"{label:<34}{r['per_s']:>9.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
                      f"{r['reserve_p50']:>13.2f}{r['commit_p50']:>12.2f}{r['batch']:>7.1f}")
        finally:
            await db.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def cli() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = ap.parse_args()
    if args.loop == "asyncio":
        asyncio.run(main(args))
    else:
        import uvloop

        uvloop.run(main(args))


if __name__ == "__main__":
    cli()
