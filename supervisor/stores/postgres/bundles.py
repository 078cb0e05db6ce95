"""PostgreSQL BundleStore (same semantics as the SQLite adapter).

Tenant bundles are written and read in the tenant's transaction (RLS lets a
tenant read platform rows but write only its own); platform bundles
(``tenant_id=None``) through ``system_tx``.
"""

from __future__ import annotations

import time
from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores._common import bundle_dict, check_name, dumps
from supervisor.stores.postgres._rows import CONSTRAINT_ERRORS, constraint_error
from supervisor.stores.postgres.db import PgDB

__all__ = ["PgBundleStore"]

_COLS = "tenant_id, name, version, digest, manifest, created_at"


def _dict(row: Any) -> dict[str, Any]:
    return bundle_dict(row, row["manifest"])


class PgBundleStore:
    def __init__(self, db: PgDB) -> None:
        self._db = db

    def _tx(self, tenant_id: str | None) -> Any:
        return self._db.system_tx() if tenant_id is None else self._db.tenant_tx(tenant_id)

    async def put_version(
        self, tenant_id: str | None, name: str, version: str, digest: str, manifest: dict[str, Any]
    ) -> bool:
        """Register a version; False if this owner already has this digest under this name."""
        check_name(name, "bundle")
        if not digest:
            raise StockadeError("input.invalid", "a bundle version needs a digest")
        payload = dumps(manifest, "bundle manifest")
        async with self._tx(tenant_id) as c:
            try:
                status = await c.execute(
                    f"INSERT INTO bundle_versions ({_COLS}) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)"
                    " ON CONFLICT DO NOTHING",
                    tenant_id, name, version, digest, payload, time.time(),
                )
                if status != "INSERT 0 1":
                    # an earlier version registered again: it becomes the current one (its content is unchanged)
                    await c.execute(
                        "UPDATE bundle_versions SET touched = nextval('bundle_touch'), retired_at = NULL"
                        " WHERE coalesce(tenant_id, '') = $1 AND name = $2 AND digest = $3",
                        tenant_id or "", name, digest,
                    )
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc) from None
        return status == "INSERT 0 1"

    async def latest(self, tenant_id: str | None, name: str) -> dict[str, Any] | None:
        async with self._tx(tenant_id) as c:
            row = await c.fetchrow(
                f"SELECT {_COLS} FROM bundle_versions WHERE coalesce(tenant_id, '') = $1 AND name = $2"
                " AND retired_at IS NULL ORDER BY touched DESC LIMIT 1",
                tenant_id or "", name,
            )
        return _dict(row) if row else None

    async def get_version(self, tenant_id: str | None, name: str, digest: str) -> dict[str, Any] | None:
        async with self._tx(tenant_id) as c:
            row = await c.fetchrow(
                f"SELECT {_COLS} FROM bundle_versions WHERE coalesce(tenant_id, '') = $1 AND name = $2 AND digest = $3",
                tenant_id or "", name, digest,
            )
        return _dict(row) if row else None

    async def retire(self, tenant_id: str | None, name: str) -> int:
        """Retire every live version of ``name`` of this owner (a deleted bundle); how many were live."""
        async with self._tx(tenant_id) as c:
            status = await c.execute(
                "UPDATE bundle_versions SET retired_at = $3"
                " WHERE coalesce(tenant_id, '') = $1 AND name = $2 AND retired_at IS NULL",
                tenant_id or "", name, time.time(),
            )
        return int(status.split()[-1])

    async def list(self, tenant_id: str) -> list[dict[str, Any]]:
        """Latest version of each of the tenant's own bundles and each platform bundle, by name (own first)."""
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(
                f"SELECT DISTINCT ON (name, tenant_id IS NULL) {_COLS} FROM bundle_versions"
                " WHERE (tenant_id = $1 OR tenant_id IS NULL) AND retired_at IS NULL"
                " ORDER BY name, tenant_id IS NULL, touched DESC",
                tenant_id,
            )
        return [_dict(r) for r in rows]
