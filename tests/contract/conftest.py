"""Contract-test fixtures: every SQL port runs against SQLite and PostgreSQL.

``sql_db`` yields a ``SqlDB`` with ``.kind`` ("sqlite" | "postgres") and
``.db`` (a migrated ``SqliteDB`` on a fresh file, or a ``PgDB`` on the
session's test database, which other tests share: create your own tenants
with ``await sql_db.new_tenant()`` rather than assuming an empty database).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor.stores.postgres.db import PgDB, open_postgres
from supervisor.stores.sqlite.db import SqliteDB, open_sqlite


@dataclass
class SqlDB:
    kind: str  # "sqlite" | "postgres"
    db: Any  # SqliteDB | PgDB
    path: Path | None = None  # the SQLite file (to open a second connection)
    url: str | None = None  # the PostgreSQL URL

    @property
    def is_pg(self) -> bool:
        return self.kind == "postgres"

    def tenant_store(self) -> Any:
        if isinstance(self.db, PgDB):
            from supervisor.stores.postgres import PgTenantStore

            return PgTenantStore(self.db)
        from supervisor.stores.sqlite import SqliteTenantStore

        return SqliteTenantStore(self.db)

    async def new_tenant(self, name: str | None = None) -> str:
        """Create a tenant with a unique name; return its id (foreign keys need real tenants)."""
        t = await self.tenant_store().create_tenant(name or f"t-{secrets.token_hex(6)}")
        return t.id

    async def reopen(self) -> Any:
        """A second, independent handle on the same database (another "process")."""
        if self.kind == "sqlite":
            assert self.path is not None
            return await open_sqlite(self.path, migrate=False)
        assert self.url is not None
        return await open_postgres(self.url, min_size=1, max_size=4, migrate=False)


def _sql_target_in(request: pytest.FixtureRequest, tmp_path: Path, pg_fixture: str = "pg_url") -> tuple[str, Any]:
    """("sqlite", path) or ("postgres", the url of ``pg_fixture``: ``fresh_pg_url`` for a database of the test's
    own)."""
    if request.param == "sqlite":
        return "sqlite", tmp_path / "stockade.db"
    return "postgres", request.getfixturevalue(pg_fixture)


@pytest.fixture(params=["sqlite", "postgres"])
def sql_target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """("sqlite", path) or ("postgres", url). Sync on purpose: ``pg_url`` runs its own event loop."""
    return _sql_target_in(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def sql_target_own_db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """``sql_target``, on PostgreSQL in a database of the test's own: for chains sealed with keys other than the
    test deployment's. The session's shared database is checked by every production node at start-up against
    its audit key, and a node refused to start when such chains were all it saw."""
    return _sql_target_in(request, tmp_path, "fresh_pg_url")


@pytest.fixture
async def sql_db(sql_target: tuple[str, Any]):
    kind, where = sql_target
    if kind == "sqlite":
        db: SqliteDB | PgDB = await open_sqlite(where)
        handle = SqlDB("sqlite", db, path=where)
    else:
        db = await open_postgres(where, min_size=1, max_size=10)
        handle = SqlDB("postgres", db, url=where)
    try:
        yield handle
    finally:
        await db.close()
