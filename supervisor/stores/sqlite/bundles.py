"""SQLite BundleStore: immutable, content-addressed bundle versions.

``tenant_id=None`` addresses platform bundles. ``latest``/``get_version``
look in exactly the owner given (a tenant's own *or* the platform's); resolving
a name for a tenant (own first, then platform) is the caller's choice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores._common import bundle_dict, check_name, dumps
from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["SqliteBundleStore"]

_COLS = "tenant_id, name, version, digest, manifest, created_at"


def _dict(row: sqlite3.Row) -> dict[str, Any]:
    return bundle_dict(row, json.loads(row["manifest"]))


class SqliteBundleStore:
    def __init__(self, db: SqliteDB) -> None:
        self._db = db

    async def put_version(
        self, tenant_id: str | None, name: str, version: str, digest: str, manifest: dict[str, Any]
    ) -> bool:
        """Register a version; False if this owner already has this digest under this name."""
        check_name(name, "bundle")
        if not digest:
            raise StockadeError("input.invalid", "a bundle version needs a digest")
        payload = dumps(manifest, "bundle manifest")
        touch = "(SELECT coalesce(max(touched), 0) + 1 FROM bundle_versions)"
        try:
            with self._db.tx():
                cur = self._db.execute(
                    f"INSERT INTO bundle_versions ({_COLS}, touched) VALUES (?, ?, ?, ?, ?, ?, {touch}) ON CONFLICT DO NOTHING",
                    (tenant_id, name, version, digest, payload, time.time()),
                )
                if cur.rowcount == 1:
                    return True
                # an earlier version registered again: it becomes the current one (its content is unchanged)
                # (and live again, if the name had been deleted)
                self._db.execute(
                    f"UPDATE bundle_versions SET touched = {touch}, retired_at = NULL"
                    " WHERE coalesce(tenant_id, '') = ? AND name = ? AND digest = ?",
                    (tenant_id or "", name, digest),
                )
                return False
        except sqlite3.IntegrityError:
            raise StockadeError("not_found", "unknown tenant") from None

    async def latest(self, tenant_id: str | None, name: str) -> dict[str, Any] | None:
        row = self._db.query_one(
            f"SELECT {_COLS} FROM bundle_versions WHERE coalesce(tenant_id, '') = ? AND name = ? AND retired_at IS NULL"
            " ORDER BY touched DESC LIMIT 1",
            (tenant_id or "", name),
        )
        return _dict(row) if row else None

    async def get_version(self, tenant_id: str | None, name: str, digest: str) -> dict[str, Any] | None:
        row = self._db.query_one(
            f"SELECT {_COLS} FROM bundle_versions WHERE coalesce(tenant_id, '') = ? AND name = ? AND digest = ?",
            (tenant_id or "", name, digest),
        )
        return _dict(row) if row else None

    async def retire(self, tenant_id: str | None, name: str) -> int:
        """Retire every live version of ``name`` of this owner (a deleted bundle); how many were live."""
        with self._db.tx():
            cur = self._db.execute(
                "UPDATE bundle_versions SET retired_at = ?"
                " WHERE coalesce(tenant_id, '') = ? AND name = ? AND retired_at IS NULL",
                (time.time(), tenant_id or "", name),
            )
            return cur.rowcount

    async def list(self, tenant_id: str) -> list[dict[str, Any]]:
        """Latest version of each of the tenant's own bundles and each platform bundle, by name (own first)."""
        rows = self._db.query(
            f"SELECT {_COLS} FROM bundle_versions b WHERE (tenant_id = ? OR tenant_id IS NULL) AND retired_at IS NULL"
            " AND touched = (SELECT max(touched) FROM bundle_versions x WHERE retired_at IS NULL"
            "           AND coalesce(x.tenant_id, '') = coalesce(b.tenant_id, '') AND x.name = b.name)"
            " ORDER BY name, tenant_id IS NULL",
            (tenant_id,),
        )
        return [_dict(r) for r in rows]
