"""PostgreSQL IdempotencyStore: ``INSERT … ON CONFLICT DO NOTHING`` decides the one claimant."""

from __future__ import annotations

from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores._common import IDEM_COLS, dumps
from supervisor.stores.postgres._rows import CONSTRAINT_ERRORS, constraint_error, to_idem
from supervisor.stores.postgres.db import PgDB
from supervisor.stores.records import IdempotencyEntry

__all__ = ["PgIdempotencyStore"]


class PgIdempotencyStore:
    def __init__(self, db: PgDB) -> None:
        self._db = db

    async def begin(self, tenant_id: str, key: str, now: float) -> IdempotencyEntry | None:
        # A holder may abandon between our insert and our read; then claim again.
        for _ in range(5):
            async with self._db.tenant_tx(tenant_id) as c:
                try:
                    claimed = await c.fetchval(
                        "INSERT INTO idempotency_keys (tenant_id, key, state, result, created_at)"
                        " VALUES ($1, $2, 'pending', NULL, $3) ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1",
                        tenant_id, key, now,
                    )
                except CONSTRAINT_ERRORS as exc:
                    raise constraint_error(exc) from None
                if claimed is not None:
                    return None
                row = await c.fetchrow(
                    f"SELECT {IDEM_COLS} FROM idempotency_keys WHERE tenant_id = $1 AND key = $2", tenant_id, key
                )
            if row is not None:
                return to_idem(row)
        raise StockadeError("idempotency.in_progress", "the idempotency key is contended; retry")

    async def complete(self, tenant_id: str, key: str, result: dict[str, Any]) -> None:
        """Record the result of a claimed key; ``conflict`` if already done, ``not_found`` if never claimed."""
        payload = dumps(result, "idempotent result")
        async with self._db.tenant_tx(tenant_id) as c:
            status = await c.execute(
                "UPDATE idempotency_keys SET state = 'done', result = $3::text::jsonb"
                " WHERE tenant_id = $1 AND key = $2 AND state = 'pending'",
                tenant_id, key, payload,
            )
            if status == "UPDATE 0":
                state = await c.fetchval(
                    "SELECT state FROM idempotency_keys WHERE tenant_id = $1 AND key = $2", tenant_id, key
                )
                if state is None:
                    raise StockadeError("not_found", "idempotency key was never claimed (or was abandoned)")
                raise StockadeError("conflict", "idempotency key already completed")

    async def abandon(self, tenant_id: str, key: str) -> None:
        """Release a pending claim (the call failed before any side effect); a done key is kept."""
        async with self._db.tenant_tx(tenant_id) as c:
            await c.execute(
                "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND state = 'pending'", tenant_id, key
            )

    async def get(self, tenant_id: str, key: str) -> IdempotencyEntry | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(
                f"SELECT {IDEM_COLS} FROM idempotency_keys WHERE tenant_id = $1 AND key = $2", tenant_id, key
            )
        return to_idem(row) if row else None

    async def prune(self, done_before: float, pending_before: float, limit: int = 1000) -> int:
        async with self._db.system_tx() as c:
            status = await c.execute(
                "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys"
                " WHERE created_at < $1 AND (state = 'done' OR created_at < $2) ORDER BY created_at LIMIT $3)",
                done_before, pending_before, limit,
            )
        return int(status.split()[-1])
