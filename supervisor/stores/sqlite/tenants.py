"""SQLite TenantStore: tenants, projects, users and API keys (hashes only)."""

from __future__ import annotations

import sqlite3
import time

from supervisor.errors import StockadeError
from supervisor.ids import new_id
from supervisor.stores._common import APIKEY_COLS, check_name
from supervisor.stores.records import ROLES, ApiKey, Project, Tenant, User
from supervisor.stores.sqlite._rows import integrity_error, to_apikey
from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["SqliteTenantStore"]


class SqliteTenantStore:
    def __init__(self, db: SqliteDB) -> None:
        self._db = db

    async def create_tenant(self, name: str) -> Tenant:
        t = Tenant(new_id("ten_"), check_name(name, "tenant"), time.time())
        try:
            self._db.execute("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)", (t.id, t.name, t.created_at))
        except sqlite3.IntegrityError:
            raise StockadeError("conflict", f"a tenant named {name!r} already exists") from None
        return t

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = self._db.query_one("SELECT id, name, created_at FROM tenants WHERE id = ?", (tenant_id,))
        return Tenant(**dict(row)) if row else None

    async def get_tenant_by_name(self, name: str) -> Tenant | None:
        row = self._db.query_one("SELECT id, name, created_at FROM tenants WHERE name = ?", (name,))
        return Tenant(**dict(row)) if row else None

    async def list_tenants(self) -> list[Tenant]:
        rows = self._db.query("SELECT id, name, created_at FROM tenants ORDER BY created_at, id")
        return [Tenant(**dict(r)) for r in rows]

    async def create_project(self, tenant_id: str, name: str) -> Project:
        p = Project(new_id("prj_"), tenant_id, check_name(name, "project"))
        try:
            self._db.execute(
                "INSERT INTO projects (id, tenant_id, name, created_at) VALUES (?, ?, ?, ?)",
                (p.id, tenant_id, p.name, time.time()),
            )
        except sqlite3.IntegrityError as exc:
            raise integrity_error(exc) from None
        return p

    async def get_project(self, tenant_id: str, project_id: str) -> Project | None:
        row = self._db.query_one(
            "SELECT id, tenant_id, name FROM projects WHERE tenant_id = ? AND id = ?", (tenant_id, project_id)
        )
        return Project(**dict(row)) if row else None

    async def create_user(self, tenant_id: str, name: str) -> User:
        u = User(new_id("usr_"), tenant_id, check_name(name, "user"))
        try:
            self._db.execute(
                "INSERT INTO users (id, tenant_id, name, created_at) VALUES (?, ?, ?, ?)",
                (u.id, tenant_id, u.name, time.time()),
            )
        except sqlite3.IntegrityError as exc:
            raise integrity_error(exc) from None
        return u

    async def get_user(self, tenant_id: str, user_id: str) -> User | None:
        row = self._db.query_one("SELECT id, tenant_id, name FROM users WHERE tenant_id = ? AND id = ?", (tenant_id, user_id))
        return User(**dict(row)) if row else None

    async def list_projects(self, tenant_id: str) -> list[Project]:
        rows = self._db.query("SELECT id, tenant_id, name FROM projects WHERE tenant_id = ? ORDER BY created_at, id",
                              (tenant_id,))
        return [Project(**dict(r)) for r in rows]

    async def list_users(self, tenant_id: str) -> list[User]:
        rows = self._db.query("SELECT id, tenant_id, name FROM users WHERE tenant_id = ? ORDER BY created_at, id",
                              (tenant_id,))
        return [User(**dict(r)) for r in rows]

    async def add_member(self, tenant_id: str, project_id: str, user_id: str) -> bool:
        try:
            cur = self._db.execute(
                "INSERT INTO project_members (tenant_id, project_id, user_id, added_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING", (tenant_id, project_id, user_id, time.time()),
            )
        except sqlite3.IntegrityError as exc:
            raise integrity_error(exc, "project or user") from None
        return cur.rowcount == 1

    async def remove_member(self, tenant_id: str, project_id: str, user_id: str) -> bool:
        cur = self._db.execute(
            "DELETE FROM project_members WHERE tenant_id = ? AND project_id = ? AND user_id = ?",
            (tenant_id, project_id, user_id),
        )
        return cur.rowcount == 1

    async def list_members(self, tenant_id: str, project_id: str) -> list[str]:
        rows = self._db.query(
            "SELECT user_id FROM project_members WHERE tenant_id = ? AND project_id = ? ORDER BY added_at, user_id",
            (tenant_id, project_id),
        )
        return [r[0] for r in rows]

    async def is_member(self, tenant_id: str, project_id: str, user_id: str) -> bool:
        return self._db.query_one(
            "SELECT 1 FROM project_members WHERE tenant_id = ? AND project_id = ? AND user_id = ?",
            (tenant_id, project_id, user_id),
        ) is not None

    async def create_key(
        self, tenant_id: str, *, key_id: str, key_hash: str, prefix: str, role: str,
        user_id: str | None = None, project_id: str | None = None,
    ) -> ApiKey:
        if role not in ROLES:
            raise StockadeError("input.invalid", f"role must be one of {', '.join(ROLES)}")
        key = ApiKey(key_id, tenant_id, role, prefix, user_id, project_id, time.time())
        try:
            self._db.execute(
                "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, role, user_id, project_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key.id, tenant_id, key_hash, prefix, role, user_id, project_id, key.created_at),
            )
        except sqlite3.IntegrityError as exc:
            raise integrity_error(exc, "tenant, user or project") from None
        return key

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """The key with this hash in any tenant, revoked or not (the caller checks ``revoked_at``)."""
        row = self._db.query_one(f"SELECT {APIKEY_COLS} FROM api_keys WHERE key_hash = ?", (key_hash,))
        return to_apikey(row) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        rows = self._db.query(f"SELECT {APIKEY_COLS} FROM api_keys WHERE tenant_id = ? ORDER BY created_at, id", (tenant_id,))
        return [to_apikey(r) for r in rows]

    async def revoke_key(self, tenant_id: str, key_id: str) -> bool:
        cur = self._db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
            (time.time(), tenant_id, key_id),
        )
        return cur.rowcount == 1
