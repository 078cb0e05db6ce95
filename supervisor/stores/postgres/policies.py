"""PostgreSQL PolicyStore: append-only policy history per tenant; ``get`` returns the newest."""

from __future__ import annotations

import time

from supervisor.errors import StockadeError
from supervisor.stores.postgres._rows import CONSTRAINT_ERRORS, constraint_error
from supervisor.stores.postgres.db import PgDB

__all__ = ["PgPolicyStore"]


class PgPolicyStore:
    def __init__(self, db: PgDB) -> None:
        self._db = db

    async def get(self, tenant_id: str) -> tuple[str, str] | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(
                "SELECT yaml_text, version FROM policies WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1", tenant_id
            )
        return (row[0], row[1]) if row else None

    async def put(self, tenant_id: str, yaml_text: str, version: str) -> None:
        """Append a version (a no-op if the current one has this version and this very text: a change of
        comments or layout keeps the version, the content hash, but is kept so that GET returns it)."""
        if not isinstance(yaml_text, str) or not isinstance(version, str) or not version:
            raise StockadeError("input.invalid", "a policy needs its YAML text and a version")
        async with self._db.tenant_tx(tenant_id) as c:
            try:
                await c.execute(
                    "INSERT INTO policies (tenant_id, version, yaml_text, created_at)"
                    " SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM"
                    "   (SELECT version, yaml_text FROM policies WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1) cur"
                    "   WHERE cur.version = $2 AND cur.yaml_text = $3)",
                    tenant_id, version, yaml_text, time.time(),
                )
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc) from None
