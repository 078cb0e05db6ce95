"""Hash-chained audit append throughput and latency, SQLite vs PostgreSQL (bounded: ~8 s).

    .venv/bin/python bench/audit_append_bench.py [postgres-admin-url]

Uses a temporary SQLite file and a temporary PostgreSQL database (created and
dropped; admin URL from argv, else $STOCKADE_TEST_DATABASE_URL, else
postgresql://postgres@127.0.0.1:5432/postgres). The seal is a real
SHA-256 + HMAC over canonical JSON, as the domain's will be.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.stores.postgres import PgAuditLog, PgTenantStore, open_postgres  # noqa: E402
from supervisor.stores.sqlite import SqliteAuditLog, SqliteTenantStore, open_sqlite  # noqa: E402

KEY = secrets.token_bytes(32)
PHASE_S = 1.2


def seal(prev: str, seq: int, fields: dict[str, Any]) -> tuple[str, str]:
    body = json.dumps({"prev": prev, "seq": seq, **fields}, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(body).hexdigest()
    return digest, hmac.new(KEY, digest.encode(), hashlib.sha256).hexdigest()


FIELDS = {"kind": "tool.allowed", "run_id": "run_bench", "tool": "echo", "args_hash": "a" * 64,
          "rule_id": "echo", "policy_version": "v1", "cost_micro": 1000, "detail": {"n": 1}}


async def phase(audit: Any, tenants: list[str], clients: int) -> tuple[float, float, float]:
    """(appends/s, p50 ms, p99 ms) for `clients` concurrent appenders spread over `tenants`."""
    lat: list[float] = []
    stop = time.perf_counter() + PHASE_S

    async def client(i: int) -> None:
        t = tenants[i % len(tenants)]
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await audit.append(t, FIELDS, seal)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    lat.sort()
    return len(lat) / elapsed, statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99) - 1] * 1e3


def report(name: str, res: tuple[float, float, float]) -> None:
    print(f"{name:<44} {res[0]:>8.0f}/s   p50 {res[1]:6.3f} ms   p99 {res[2]:6.3f} ms")


async def bench_sqlite() -> None:
    with tempfile.TemporaryDirectory() as d:
        db = await open_sqlite(Path(d) / "bench.db")
        try:
            tenants = SqliteTenantStore(db)
            ts = [(await tenants.create_tenant(f"t{i}")).id for i in range(16)]
            audit = SqliteAuditLog(db)
            await phase(audit, ts[:1], 1)  # warm-up is short: the phase is bounded anyway
            report("sqlite  1 client", await phase(audit, ts[:1], 1))
        finally:
            await db.close()


async def bench_postgres(admin_url: str) -> None:
    import asyncpg

    name = f"stockade_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    p = urlsplit(admin_url)
    url = urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))
    try:
        db = await open_postgres(url, min_size=16, max_size=16)
        try:
            tenants = PgTenantStore(db)
            ts = [(await tenants.create_tenant(f"t{i}")).id for i in range(16)]
            audit = PgAuditLog(db)
            report("postgres  1 client", await phase(audit, ts[:1], 1))
            report("postgres 16 clients, one tenant (one chain)", await phase(audit, ts[:1], 16))
            report("postgres 16 clients, 16 tenants", await phase(audit, ts, 16))
        finally:
            await db.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    admin = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "STOCKADE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    await bench_sqlite()
    await bench_postgres(admin)


if __name__ == "__main__":
    asyncio.run(main())
