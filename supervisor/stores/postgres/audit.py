"""PostgreSQL AuditLog: per-tenant hash chain, append-only (triggers refuse UPDATE/DELETE/TRUNCATE).

Append = 4 round trips in one tenant transaction: BEGIN+scope, lock the chain
head (``audit_heads`` row, ``FOR UPDATE``; created on first use), insert the
record and advance the head in one statement, COMMIT. The hash/MAC are computed
here in the application between the lock and the insert — a stored function
would need one round trip less but the MAC key must never reach the database.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from supervisor.errors import StockadeError
from supervisor.stores._common import AUDIT_COLS, dumps, normalize_audit_fields
from supervisor.stores._common import check_limit as _limit
from supervisor.stores.postgres._rows import to_audit
from supervisor.stores.postgres.db import PgDB
from supervisor.stores.records import AuditRecord

__all__ = ["PgAuditLog"]

_LOCK_HEAD = "SELECT seq, hash FROM audit_heads WHERE tenant_id = $1 FOR UPDATE"
# First record of a tenant: create the head (genesis defaults) and lock it; a
# concurrent creator makes this wait and then return the committed head.
_CREATE_HEAD = (
    "INSERT INTO audit_heads (tenant_id) VALUES ($1)"
    " ON CONFLICT (tenant_id) DO UPDATE SET seq = audit_heads.seq RETURNING seq, hash"
)
_APPEND = (
    f"WITH a AS (INSERT INTO audit_log ({AUDIT_COLS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb, $13, $14, $15))"
    " UPDATE audit_heads SET seq = $2, hash = $14 WHERE tenant_id = $1"
)


@asynccontextmanager
async def _audit_errors() -> AsyncIterator[None]:
    try:
        yield
    except StockadeError as exc:
        if exc.code == "store.unavailable":
            raise StockadeError("audit.unavailable", exc.detail) from exc
        raise


class PgAuditLog:
    def __init__(self, db: PgDB) -> None:
        self._db = db

    async def append(
        self, tenant_id: str, fields: dict[str, Any], seal: Callable[[str, int, dict[str, Any]], tuple[str, str]]
    ) -> AuditRecord:
        f = normalize_audit_fields(fields, time.time())
        detail_json = dumps(f["detail"], "audit detail")
        async with _audit_errors(), self._db.tenant_tx(tenant_id) as c:
            head = await c.fetchrow(_LOCK_HEAD, tenant_id)
            if head is None:
                try:
                    head = await c.fetchrow(_CREATE_HEAD, tenant_id)
                except asyncpg.ForeignKeyViolationError:
                    raise StockadeError("not_found", "unknown tenant") from None
            prev_hash, seq = head["hash"], head["seq"] + 1
            digest, mac = seal(prev_hash, seq, f)
            await c.execute(
                _APPEND, tenant_id, seq, f["ts"], f["kind"], f["run_id"], f["tool"], f["args_hash"], f["rule_id"],
                f["policy_version"], f["code"], f["cost_micro"], detail_json, prev_hash, digest, mac,
            )
        return AuditRecord(tenant_id=tenant_id, seq=seq, prev_hash=prev_hash, hash=digest, mac=mac, **f)

    async def list(
        self, tenant_id: str, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None
    ) -> list[AuditRecord]:
        async with _audit_errors(), self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(
                f"SELECT {AUDIT_COLS} FROM audit_log WHERE tenant_id = $1 AND seq > $2"
                " AND ($3::text IS NULL OR run_id = $3) ORDER BY seq LIMIT $4",
                tenant_id, after_seq, run_id, _limit(limit),
            )
        return [to_audit(r) for r in rows]

    async def head(self, tenant_id: str) -> AuditRecord | None:
        async with _audit_errors(), self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(
                f"SELECT {AUDIT_COLS} FROM audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1", tenant_id
            )
        return to_audit(row) if row else None

    async def tenants(self) -> list[str]:
        async with _audit_errors(), self._db.system_tx() as c:
            return [r[0] for r in await c.fetch("SELECT tenant_id FROM audit_heads ORDER BY tenant_id")]
