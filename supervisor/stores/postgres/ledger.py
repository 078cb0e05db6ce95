"""PostgreSQL ledger: each mutation is one stored-function call (one round trip).

The functions (migrations/postgres/0010_ledger.sql) lock every account row a
statement touches in ascending id order before updating any (FACTS.md: heap
order deadlocks), and scope themselves to the tenant (role ``stockade_app`` +
``stockade.tenant_id``) so row-level security applies exactly as in
``PgDB.tenant_tx``. Called outside an explicit transaction: the statement is
its own transaction, so a cut connection leaves either all of it or none.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from supervisor.budget import check_amount, check_cap, check_scopes, exceeded_error, period_key, tier_order
from supervisor.errors import StockadeError
from supervisor.stores.postgres.db import UNAVAILABLE_ERRORS, PgDB
from supervisor.stores.records import BudgetAccount, LedgerEntry, Reservation

__all__ = ["PgLedger"]

_SWEEP_BATCH = 1000
_EXCEEDED = "SB001"  # raised by stockade_ledger_reserve: the transaction aborted, nothing changed
# A deadlock can only arise while two first users create the same period's account
# rows; PostgreSQL then aborts one transaction whole, so retrying it is safe.
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


@asynccontextmanager
async def _ledger_errors() -> AsyncIterator[None]:
    """Any "cannot reach the database" becomes ``ledger.unavailable`` (fail closed)."""
    try:
        yield
    except StockadeError as exc:
        if exc.code == "store.unavailable":
            raise StockadeError("ledger.unavailable", "The budget ledger cannot be reached; the call was not run.") from exc
        raise
    except UNAVAILABLE_ERRORS as exc:
        raise StockadeError("ledger.unavailable", "The budget ledger cannot be reached; the call was not run.") from exc
    except asyncpg.exceptions.ForeignKeyViolationError:
        raise StockadeError("not_found", "no such tenant") from None


class PgLedger:
    """``Ledger`` port over a ``PgDB``."""

    def __init__(self, db: PgDB) -> None:
        self.db = db

    async def _call(self, sql: str, *args: Any, retries: int = 2) -> list[asyncpg.Record]:
        async with _ledger_errors():
            for attempt in range(retries + 1):
                try:
                    async with self.db.acquire() as conn:
                        return await conn.fetch(sql, *args)
                except _RETRYABLE:
                    if attempt == retries:
                        raise
            raise AssertionError("unreachable")

    async def set_cap(self, tenant_id: str, scope: str, scope_id: str, cap_micro: int, period: str = "month") -> BudgetAccount:
        check_cap(tenant_id, scope, scope_id, cap_micro, period)
        now = time.time()
        async with _ledger_errors(), self.db.tenant_tx(tenant_id) as conn:
            await conn.execute(
                """INSERT INTO budget_caps (tenant_id, scope, scope_id, cap_micro, period, updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (tenant_id, scope, scope_id)
                   DO UPDATE SET cap_micro = excluded.cap_micro, period = excluded.period, updated_at = excluded.updated_at""",
                tenant_id, scope, scope_id, cap_micro, period, now,
            )
            row = await conn.fetchrow(
                "SELECT spent_micro, reserved_micro FROM budget_accounts"
                " WHERE tenant_id = $1 AND scope = $2 AND scope_id = $3 AND period_key = $4",
                tenant_id, scope, scope_id, period_key(now, period),
            )
        return BudgetAccount(
            tenant_id, scope, scope_id, cap_micro, period, period_key(now, period),
            int(row["spent_micro"]) if row else 0, int(row["reserved_micro"]) if row else 0,
        )

    async def accounts(self, tenant_id: str, now: float) -> list[BudgetAccount]:
        month = period_key(now, "month")
        async with _ledger_errors(), self.db.tenant_tx(tenant_id) as conn:
            rows = await conn.fetch(
                """SELECT c.scope, c.scope_id, c.cap_micro, c.period,
                          CASE WHEN c.period = 'lifetime' THEN 'lifetime' ELSE $2 END AS period_key,
                          coalesce(a.spent_micro, 0) AS spent_micro, coalesce(a.reserved_micro, 0) AS reserved_micro
                     FROM budget_caps c
                     LEFT JOIN budget_accounts a
                       ON a.tenant_id = c.tenant_id AND a.scope = c.scope AND a.scope_id = c.scope_id
                      AND a.period_key = CASE WHEN c.period = 'lifetime' THEN 'lifetime' ELSE $2 END
                    WHERE c.tenant_id = $1""",
                tenant_id, month,
            )
        accounts = [
            BudgetAccount(tenant_id, r["scope"], r["scope_id"], int(r["cap_micro"]), r["period"], r["period_key"],
                          int(r["spent_micro"]), int(r["reserved_micro"]))
            for r in rows
        ]
        return sorted(accounts, key=lambda a: tier_order(a.scope, a.scope_id))

    async def reserve(
        self, tenant_id: str, scopes: list[tuple[str, str]], amount_micro: int, *,
        reservation_id: str, run_id: str | None, expires_at: float, now: float,
    ) -> Reservation:
        tiers = check_scopes(scopes)
        check_amount(amount_micro)
        if not isinstance(reservation_id, str) or not reservation_id:
            raise StockadeError("input.invalid", "a reservation needs an id")
        try:
            rows = await self._call(
                "SELECT r_status FROM stockade_ledger_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                tenant_id, [s for s, _ in tiers], [i for _, i in tiers], period_key(now, "month"), amount_micro,
                reservation_id, run_id, float(expires_at), float(now),
            )
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", None) != _EXCEEDED:
                raise
            tier = json.loads(exc.detail or "{}")
            raise exceeded_error(tier["scope"], tier["scope_id"], tier["cap"], tier["remaining"], amount_micro) from None
        if rows[0]["r_status"] == "duplicate":
            raise StockadeError("conflict", f"reservation {reservation_id} already exists")
        return Reservation(reservation_id, tenant_id, run_id, amount_micro, tuple(tiers), float(expires_at), "held")

    async def commit(
        self, tenant_id: str, reservation_id: str, actual_micro: int, *, tool: str | None, now: float,
    ) -> list[LedgerEntry]:
        check_amount(actual_micro, "actual cost")
        rows = await self._call(
            "SELECT * FROM stockade_ledger_commit($1, $2, $3, $4, $5)",
            tenant_id, reservation_id, actual_micro, tool, float(now),
        )
        if rows and rows[0]["r_status"] == "missing":
            raise StockadeError("not_found", f"no reservation {reservation_id}")
        return [
            LedgerEntry(int(r["r_id"]), tenant_id, r["r_scope"], r["r_scope_id"], r["r_period_key"], int(r["r_amount"]),
                        reservation_id, r["r_run"], r["r_tool"], float(r["r_ts"]), dict(r["r_detail"] or {}))
            for r in rows if r["r_status"] == "entry"
        ]

    async def release(self, tenant_id: str, reservation_id: str) -> None:
        await self._call("SELECT stockade_ledger_release($1, $2, NULL, $3)", tenant_id, reservation_id, time.time())

    async def release_run(self, tenant_id: str, run_id: str) -> int:
        rows = await self._call("SELECT stockade_ledger_release($1, NULL, $2, $3) AS n", tenant_id, run_id, time.time())
        return int(rows[0]["n"])

    async def sweep(self, now: float) -> int:
        total = 0
        while True:
            rows = await self._call("SELECT stockade_ledger_sweep($1, $2) AS n", float(now), _SWEEP_BATCH)
            n = int(rows[0]["n"])
            total += n
            if n < _SWEEP_BATCH:
                return total

    async def entries(self, tenant_id: str, *, after_id: int = 0, limit: int = 100) -> list[LedgerEntry]:
        if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
            raise StockadeError("input.invalid", "after_id must be a non-negative integer")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise StockadeError("input.invalid", "limit must be between 1 and 1000")
        async with _ledger_errors(), self.db.tenant_tx(tenant_id) as conn:
            rows = await conn.fetch(
                """SELECT id, scope, scope_id, period_key, amount_micro, reservation_id, run_id, tool, ts, detail
                     FROM ledger_entries WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3""",
                tenant_id, after_id, limit,
            )
        return [
            LedgerEntry(int(r["id"]), tenant_id, r["scope"], r["scope_id"], r["period_key"], int(r["amount_micro"]),
                        r["reservation_id"], r["run_id"], r["tool"], float(r["ts"]), dict(r["detail"] or {}))
            for r in rows
        ]
