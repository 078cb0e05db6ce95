"""SQLite AuditLog: per-tenant hash chain, append-only (triggers refuse UPDATE/DELETE).

The chain head is read, sealed and advanced inside one ``BEGIN IMMEDIATE``
transaction, which is the per-tenant lock (and more) on SQLite.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores._common import AUDIT_COLS, GENESIS_HASH, dumps, normalize_audit_fields
from supervisor.stores._common import check_limit as _limit
from supervisor.stores.records import AuditRecord
from supervisor.stores.sqlite._rows import to_audit
from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["SqliteAuditLog"]


@contextmanager
def _audit_errors() -> Iterator[None]:
    try:
        yield
    except StockadeError as exc:
        if exc.code == "store.unavailable":
            raise StockadeError("audit.unavailable", exc.detail) from exc
        raise


class SqliteAuditLog:
    def __init__(self, db: SqliteDB) -> None:
        self._db = db

    async def append(
        self, tenant_id: str, fields: dict[str, Any], seal: Callable[[str, int, dict[str, Any]], tuple[str, str]]
    ) -> AuditRecord:
        f = normalize_audit_fields(fields, time.time())
        detail_json = dumps(f["detail"], "audit detail")
        with _audit_errors(), self._db.tx() as c:
            head = c.execute("SELECT seq, hash FROM audit_heads WHERE tenant_id = ?", (tenant_id,)).fetchone()
            prev_hash, seq = (head[1], head[0] + 1) if head else (GENESIS_HASH, 1)
            digest, mac = seal(prev_hash, seq, f)
            try:
                c.execute(
                    f"INSERT INTO audit_log ({AUDIT_COLS}) VALUES ({', '.join('?' * 15)})",
                    (tenant_id, seq, f["ts"], f["kind"], f["run_id"], f["tool"], f["args_hash"], f["rule_id"],
                     f["policy_version"], f["code"], f["cost_micro"], detail_json, prev_hash, digest, mac),
                )
            except sqlite3.IntegrityError as exc:
                if "FOREIGN KEY" in str(exc):
                    raise StockadeError("not_found", "unknown tenant") from None
                raise
            c.execute(
                "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES (?, ?, ?)"
                " ON CONFLICT (tenant_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (tenant_id, seq, digest),
            )
        return AuditRecord(tenant_id=tenant_id, seq=seq, prev_hash=prev_hash, hash=digest, mac=mac, **f)

    async def list(
        self, tenant_id: str, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None
    ) -> list[AuditRecord]:
        sql = f"SELECT {AUDIT_COLS} FROM audit_log WHERE tenant_id = ? AND seq > ?"
        params: list[Any] = [tenant_id, after_seq]
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        params.append(_limit(limit))
        with _audit_errors():
            return [to_audit(r) for r in self._db.query(sql + " ORDER BY seq LIMIT ?", params)]

    async def head(self, tenant_id: str) -> AuditRecord | None:
        with _audit_errors():
            row = self._db.query_one(
                f"SELECT {AUDIT_COLS} FROM audit_log WHERE tenant_id = ? ORDER BY seq DESC LIMIT 1", (tenant_id,)
            )
        return to_audit(row) if row else None

    async def tenants(self) -> list[str]:
        with _audit_errors():
            return [r[0] for r in self._db.query("SELECT tenant_id FROM audit_heads ORDER BY tenant_id")]
