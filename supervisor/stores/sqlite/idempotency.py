"""SQLite IdempotencyStore: a key is claimed by exactly one caller (atomic insert-or-return)."""

from __future__ import annotations

import sqlite3
from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores._common import IDEM_COLS, dumps
from supervisor.stores.records import IdempotencyEntry
from supervisor.stores.sqlite._rows import integrity_error, to_idem
from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["SqliteIdempotencyStore"]


class SqliteIdempotencyStore:
    def __init__(self, db: SqliteDB) -> None:
        self._db = db

    async def begin(self, tenant_id: str, key: str, now: float) -> IdempotencyEntry | None:
        with self._db.tx() as c:
            try:
                claimed = c.execute(
                    "INSERT INTO idempotency_keys (tenant_id, key, state, result, created_at)"
                    " VALUES (?, ?, 'pending', NULL, ?) ON CONFLICT (tenant_id, key) DO NOTHING RETURNING key",
                    (tenant_id, key, now),
                ).fetchone()
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc) from None
            if claimed is not None:
                return None
            row = c.execute(
                f"SELECT {IDEM_COLS} FROM idempotency_keys WHERE tenant_id = ? AND key = ?", (tenant_id, key)
            ).fetchone()
        return to_idem(row)

    async def complete(self, tenant_id: str, key: str, result: dict[str, Any]) -> None:
        """Record the result of a claimed key; ``conflict`` if already done, ``not_found`` if never claimed."""
        payload = dumps(result, "idempotent result")
        with self._db.tx() as c:
            cur = c.execute(
                "UPDATE idempotency_keys SET state = 'done', result = ? WHERE tenant_id = ? AND key = ? AND state = 'pending'",
                (payload, tenant_id, key),
            )
            if cur.rowcount == 0:
                row = c.execute("SELECT state FROM idempotency_keys WHERE tenant_id = ? AND key = ?", (tenant_id, key)).fetchone()
                if row is None:
                    raise StockadeError("not_found", "idempotency key was never claimed (or was abandoned)")
                raise StockadeError("conflict", "idempotency key already completed")

    async def abandon(self, tenant_id: str, key: str) -> None:
        """Release a pending claim (the call failed before any side effect); a done key is kept."""
        self._db.execute("DELETE FROM idempotency_keys WHERE tenant_id = ? AND key = ? AND state = 'pending'", (tenant_id, key))

    async def get(self, tenant_id: str, key: str) -> IdempotencyEntry | None:
        row = self._db.query_one(f"SELECT {IDEM_COLS} FROM idempotency_keys WHERE tenant_id = ? AND key = ?", (tenant_id, key))
        return to_idem(row) if row else None

    async def prune(self, done_before: float, pending_before: float, limit: int = 1000) -> int:
        def delete(c: sqlite3.Connection) -> int:
            return c.execute(
                "DELETE FROM idempotency_keys WHERE (tenant_id, key) IN (SELECT tenant_id, key FROM idempotency_keys"
                " WHERE created_at < ? AND (state = 'done' OR created_at < ?) ORDER BY created_at LIMIT ?)",
                (done_before, pending_before, limit),
            ).rowcount

        return await self._db.write(delete, one_statement=True)
