"""SQLite PolicyStore: append-only policy history per tenant; ``get`` returns the newest."""

from __future__ import annotations

import sqlite3
import time

from supervisor.errors import StockadeError
from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["SqlitePolicyStore"]


class SqlitePolicyStore:
    def __init__(self, db: SqliteDB) -> None:
        self._db = db

    async def get(self, tenant_id: str) -> tuple[str, str] | None:
        row = self._db.query_one(
            "SELECT yaml_text, version FROM policies WHERE tenant_id = ? ORDER BY id DESC LIMIT 1", (tenant_id,)
        )
        return (row[0], row[1]) if row else None

    async def put(self, tenant_id: str, yaml_text: str, version: str) -> None:
        """Append a version (a no-op if the current one has this version and this very text: a change of
        comments or layout keeps the version, the content hash, but is kept so that GET returns it)."""
        if not isinstance(yaml_text, str) or not isinstance(version, str) or not version:
            raise StockadeError("input.invalid", "a policy needs its YAML text and a version")
        with self._db.tx() as c:
            cur = c.execute(
                "SELECT version, yaml_text FROM policies WHERE tenant_id = ? ORDER BY id DESC LIMIT 1", (tenant_id,)
            ).fetchone()
            if cur is not None and (cur[0], cur[1]) == (version, yaml_text):
                return
            try:
                c.execute(
                    "INSERT INTO policies (tenant_id, version, yaml_text, created_at) VALUES (?, ?, ?, ?)",
                    (tenant_id, version, yaml_text, time.time()),
                )
            except sqlite3.IntegrityError:
                raise StockadeError("not_found", "unknown tenant") from None
