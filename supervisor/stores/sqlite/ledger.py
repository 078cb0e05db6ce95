"""SQLite ledger for the embedded deployment.

Every mutation is one ``BEGIN IMMEDIATE`` transaction (``SqliteDB.tx``): the
database write lock serialises reservers across coroutines and processes, so
check-then-update cannot race. Nothing awaits inside a transaction.

Every tier is metered on two account rows, this month's and its lifetime one: a
reservation holds on both, a settlement charges and releases both, the cap checks
the row of its own period kind, and the entry is written on that row
(supervisor/budget/periods.py says why: a cap that switches period keeps what was spent).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from supervisor.budget import (
    LIFETIME,
    AccountState,
    check_amount,
    check_cap,
    check_scopes,
    exceeded_error,
    period_key,
    settle,
    tier_order,
)
from supervisor.errors import StockadeError
from supervisor.stores.records import BudgetAccount, CapSpec, LedgerEntry, Reservation
from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["SqliteLedger"]

# cap_micro: the tier's cap when it is of this row's period kind (else the row is only metered);
# booked: the row the tier's entry is written on (the cap's kind; month when uncapped).
_ACCOUNTS_OF = """SELECT a.id, a.scope, a.scope_id, a.period_key, a.spent_micro, a.reserved_micro, a.warned,
           CASE WHEN (c.period = 'lifetime') = (a.period_key = 'lifetime') THEN c.cap_micro END AS cap_micro,
           (coalesce(c.period, 'month') = 'lifetime') = (a.period_key = 'lifetime') AS booked
    FROM budget_accounts a
    LEFT JOIN budget_caps c ON c.tenant_id = a.tenant_id AND c.scope = a.scope AND c.scope_id = a.scope_id
    WHERE a.tenant_id = ? AND a.id IN (SELECT value FROM json_each(?)) ORDER BY a.id"""


@contextmanager
def _ledger_errors() -> Iterator[None]:
    try:
        yield
    except StockadeError as exc:
        if exc.code == "store.unavailable":
            raise StockadeError("ledger.unavailable", "The budget ledger cannot be reached; the call was not run.") from exc
        raise
    except sqlite3.IntegrityError as exc:
        if "FOREIGN KEY" in str(exc):
            raise StockadeError("not_found", "no such tenant") from None
        raise


def _state(r: sqlite3.Row) -> AccountState:
    return AccountState(int(r["id"]), r["scope"], r["scope_id"], r["period_key"], int(r["spent_micro"]),
                        int(r["reserved_micro"]), bool(r["warned"]), None if r["cap_micro"] is None else int(r["cap_micro"]),
                        bool(r["booked"]))


def _entry(tenant_id: str, r: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(int(r["id"]), tenant_id, r["scope"], r["scope_id"], r["period_key"], int(r["amount_micro"]),
                       r["reservation_id"], r["run_id"], r["tool"], float(r["ts"]), json.loads(r["detail"] or "{}"))


class SqliteLedger:
    """``Ledger`` port over a ``SqliteDB``."""

    def __init__(self, db: SqliteDB) -> None:
        self.db = db

    async def set_cap(self, tenant_id: str, scope: str, scope_id: str, cap_micro: int, period: str = "month") -> BudgetAccount:
        return (await self.set_caps(tenant_id, [(scope, scope_id, cap_micro, period)]))[0]

    async def set_caps(self, tenant_id: str, caps: Sequence[CapSpec]) -> list[BudgetAccount]:
        for scope, scope_id, cap_micro, period in caps:  # every cap checked before any is written
            check_cap(tenant_id, scope, scope_id, cap_micro, period)
        now = time.time()
        out: list[BudgetAccount] = []
        with _ledger_errors(), self.db.tx() as conn:
            for scope, scope_id, cap_micro, period in caps:
                pk = period_key(now, period)
                was = conn.execute(
                    "SELECT cap_micro, period FROM budget_caps WHERE tenant_id = ? AND scope = ? AND scope_id = ?",
                    (tenant_id, scope, scope_id),
                ).fetchone()
                conn.execute(
                    """INSERT INTO budget_caps (tenant_id, scope, scope_id, cap_micro, period, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT (tenant_id, scope, scope_id)
                       DO UPDATE SET cap_micro = excluded.cap_micro, period = excluded.period, updated_at = excluded.updated_at""",
                    (tenant_id, scope, scope_id, cap_micro, period, now),
                )
                row = conn.execute(
                    "SELECT spent_micro, reserved_micro FROM budget_accounts"
                    " WHERE tenant_id = ? AND scope = ? AND scope_id = ? AND period_key = ?",
                    (tenant_id, scope, scope_id, pk),
                ).fetchone()
                out.append(BudgetAccount(tenant_id, scope, scope_id, cap_micro, period, pk,
                                         int(row["spent_micro"]) if row else 0, int(row["reserved_micro"]) if row else 0,
                                         int(was["cap_micro"]) if was else None, was["period"] if was else None))
        return out

    async def accounts(self, tenant_id: str, now: float) -> list[BudgetAccount]:
        month = period_key(now, "month")
        with _ledger_errors():
            rows = self.db.query(
                """SELECT c.scope, c.scope_id, c.cap_micro, c.period,
                          CASE WHEN c.period = 'lifetime' THEN 'lifetime' ELSE ? END AS period_key,
                          coalesce(a.spent_micro, 0) AS spent_micro, coalesce(a.reserved_micro, 0) AS reserved_micro
                     FROM budget_caps c
                     LEFT JOIN budget_accounts a
                       ON a.tenant_id = c.tenant_id AND a.scope = c.scope AND a.scope_id = c.scope_id
                      AND a.period_key = CASE WHEN c.period = 'lifetime' THEN 'lifetime' ELSE ? END
                    WHERE c.tenant_id = ?""",
                (month, month, tenant_id),
            )
        accounts = [
            BudgetAccount(tenant_id, r["scope"], r["scope_id"], int(r["cap_micro"]), r["period"], r["period_key"],
                          int(r["spent_micro"]), int(r["reserved_micro"]))
            for r in rows
        ]
        return sorted(accounts, key=lambda a: tier_order(a.scope, a.scope_id))

    def _account_ids(self, conn: sqlite3.Connection, tenant_id: str, tiers: list[tuple[str, str]], month: str) -> list[int]:
        """Both rows of every tier (this month's and the lifetime one), created at zero on first use."""
        keys = [(tenant_id, scope, scope_id, pk) for scope, scope_id in tiers for pk in (month, LIFETIME)]
        conn.executemany(
            "INSERT INTO budget_accounts (tenant_id, scope, scope_id, period_key) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tenant_id, scope, scope_id, period_key) DO NOTHING",
            keys,
        )
        ids = []
        for key in keys:
            row = conn.execute(
                "SELECT id FROM budget_accounts WHERE tenant_id = ? AND scope = ? AND scope_id = ? AND period_key = ?",
                key,
            ).fetchone()
            ids.append(int(row["id"]))
        return sorted(ids)

    async def reserve(
        self, tenant_id: str, scopes: list[tuple[str, str]], amount_micro: int, *,
        reservation_id: str, run_id: str | None, expires_at: float, now: float,
    ) -> Reservation:
        tiers = check_scopes(scopes)
        check_amount(amount_micro)
        if not isinstance(reservation_id, str) or not reservation_id:
            raise StockadeError("input.invalid", "a reservation needs an id")
        month = period_key(now, "month")
        with _ledger_errors(), self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM budget_reservations WHERE tenant_id = ? AND id = ?",
                            (tenant_id, reservation_id)).fetchone():
                raise StockadeError("conflict", f"reservation {reservation_id} already exists")
            ids = self._account_ids(conn, tenant_id, tiers, month)
            states = [_state(r) for r in conn.execute(_ACCOUNTS_OF, (tenant_id, json.dumps(ids)))]
            over = [a for a in states
                    if a.cap_micro is not None and a.spent_micro + a.reserved_micro + amount_micro > a.cap_micro]
            if over:
                worst = min(over, key=lambda a: (a.cap_micro - a.spent_micro - a.reserved_micro,  # type: ignore[operator]
                                                 tier_order(a.scope, a.scope_id)))
                assert worst.cap_micro is not None
                raise exceeded_error(worst.scope, worst.scope_id, worst.cap_micro,
                                     worst.cap_micro - worst.spent_micro - worst.reserved_micro, amount_micro)
            conn.execute(
                "UPDATE budget_accounts SET reserved_micro = reserved_micro + ?"
                " WHERE tenant_id = ? AND id IN (SELECT value FROM json_each(?))",
                (amount_micro, tenant_id, json.dumps(ids)),
            )
            conn.execute(
                """INSERT INTO budget_reservations (tenant_id, id, run_id, amount_micro, account_ids, state, created_at, expires_at)
                   VALUES (?, ?, ?, ?, ?, 'held', ?, ?)""",
                (tenant_id, reservation_id, run_id, amount_micro, json.dumps(ids), float(now), float(expires_at)),
            )
        return Reservation(reservation_id, tenant_id, run_id, amount_micro, tuple(tiers), float(expires_at), "held")

    async def commit(
        self, tenant_id: str, reservation_id: str, actual_micro: int, *, tool: str | None, now: float,
    ) -> list[LedgerEntry]:
        check_amount(actual_micro, "actual cost")
        with _ledger_errors(), self.db.tx() as conn:
            res = conn.execute("SELECT * FROM budget_reservations WHERE tenant_id = ? AND id = ?",
                               (tenant_id, reservation_id)).fetchone()
            if res is None:
                raise StockadeError("not_found", f"no reservation {reservation_id}")
            if res["state"] == "committed":  # a repeat: the first settlement stands
                return [_entry(tenant_id, r) for r in conn.execute(
                    "SELECT * FROM ledger_entries WHERE tenant_id = ? AND reservation_id = ? ORDER BY id",
                    (tenant_id, reservation_id))]
            states = [_state(r) for r in conn.execute(_ACCOUNTS_OF, (tenant_id, res["account_ids"]))]
            charge, settled = settle(int(res["amount_micro"]), actual_micro, res["state"] == "released", states)
            entries = []
            for s in settled:
                a = s.account
                conn.execute("UPDATE budget_accounts SET spent_micro = ?, reserved_micro = ?, warned = ? WHERE id = ?",
                             (a.spent_micro, a.reserved_micro, int(a.warned), a.id))
                if charge > 0 and a.booked:  # one entry per tier: on the row its cap checks
                    detail = json.dumps(s.detail, separators=(",", ":"))
                    cur = conn.execute(
                        """INSERT INTO ledger_entries (tenant_id, account_id, scope, scope_id, period_key, amount_micro,
                                                       reservation_id, run_id, tool, ts, detail)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                        (tenant_id, a.id, a.scope, a.scope_id, a.period_key, charge, reservation_id, res["run_id"],
                         tool, float(now), detail),
                    )
                    entries.append(LedgerEntry(int(cur.lastrowid or 0), tenant_id, a.scope, a.scope_id, a.period_key,
                                               charge, reservation_id, res["run_id"], tool, float(now), dict(s.detail)))
            conn.execute(
                "UPDATE budget_reservations SET state = 'committed', settled_at = ?, charged_micro = ?"
                " WHERE tenant_id = ? AND id = ?",
                (float(now), charge, tenant_id, reservation_id),
            )
        return entries

    def _release_where(self, where: str, params: tuple[object, ...], now: float) -> int:
        with _ledger_errors(), self.db.tx() as conn:
            held = conn.execute(
                f"SELECT tenant_id, id, amount_micro, account_ids FROM budget_reservations WHERE state = 'held' AND {where}",
                params,
            ).fetchall()
            totals: dict[int, int] = {}
            for r in held:
                for acc in json.loads(r["account_ids"]):
                    totals[int(acc)] = totals.get(int(acc), 0) + int(r["amount_micro"])
            for acc, amount in sorted(totals.items()):
                conn.execute("UPDATE budget_accounts SET reserved_micro = reserved_micro - ? WHERE id = ?", (amount, acc))
            conn.executemany(
                "UPDATE budget_reservations SET state = 'released', settled_at = ? WHERE tenant_id = ? AND id = ?",
                [(float(now), r["tenant_id"], r["id"]) for r in held],
            )
        return len(held)

    async def release(self, tenant_id: str, reservation_id: str) -> None:
        self._release_where("tenant_id = ? AND id = ?", (tenant_id, reservation_id), time.time())

    async def release_run(self, tenant_id: str, run_id: str) -> int:
        return self._release_where("tenant_id = ? AND run_id = ?", (tenant_id, run_id), time.time())

    async def sweep(self, now: float) -> int:
        return self._release_where("expires_at <= ?", (float(now),), float(now))

    async def entries(self, tenant_id: str, *, after_id: int = 0, limit: int = 100) -> list[LedgerEntry]:
        if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
            raise StockadeError("input.invalid", "after_id must be a non-negative integer")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise StockadeError("input.invalid", "limit must be between 1 and 1000")
        with _ledger_errors():
            rows = self.db.query(
                "SELECT * FROM ledger_entries WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?",
                (tenant_id, after_id, limit),
            )
        return [_entry(tenant_id, r) for r in rows]
