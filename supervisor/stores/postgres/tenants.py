"""PostgreSQL TenantStore. Tenant rows are read and written as ``stockade_system``
(a tenant does not exist yet when it is created, and key lookup is cross-tenant);
projects, users and keys of one tenant go through ``tenant_tx`` (RLS)."""

from __future__ import annotations

import time

from supervisor.errors import StockadeError
from supervisor.ids import new_id
from supervisor.stores._common import APIKEY_COLS, check_name
from supervisor.stores.postgres._rows import CONSTRAINT_ERRORS, constraint_error, to_apikey
from supervisor.stores.postgres.db import PgDB
from supervisor.stores.records import ROLES, ApiKey, Project, Tenant, User

__all__ = ["PgTenantStore"]


class PgTenantStore:
    def __init__(self, db: PgDB) -> None:
        self._db = db

    async def create_tenant(self, name: str) -> Tenant:
        t = Tenant(new_id("ten_"), check_name(name, "tenant"), time.time())
        async with self._db.system_tx() as c:
            inserted = await c.fetchval(
                "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING id",
                t.id, t.name, t.created_at,
            )
        if inserted is None:
            raise StockadeError("conflict", f"a tenant named {name!r} already exists")
        return t

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._db.system_tx() as c:
            row = await c.fetchrow("SELECT id, name, created_at FROM tenants WHERE id = $1", tenant_id)
        return Tenant(**dict(row.items())) if row else None

    async def get_tenant_by_name(self, name: str) -> Tenant | None:
        async with self._db.system_tx() as c:
            row = await c.fetchrow("SELECT id, name, created_at FROM tenants WHERE name = $1", name)
        return Tenant(**dict(row.items())) if row else None

    async def list_tenants(self) -> list[Tenant]:
        async with self._db.system_tx() as c:
            rows = await c.fetch("SELECT id, name, created_at FROM tenants ORDER BY created_at, id")
        return [Tenant(**dict(r.items())) for r in rows]

    async def create_project(self, tenant_id: str, name: str) -> Project:
        p = Project(new_id("prj_"), tenant_id, check_name(name, "project"))
        async with self._db.tenant_tx(tenant_id) as c:
            try:
                await c.execute(
                    "INSERT INTO projects (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)",
                    p.id, tenant_id, p.name, time.time(),
                )
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc) from None
        return p

    async def get_project(self, tenant_id: str, project_id: str) -> Project | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(
                "SELECT id, tenant_id, name FROM projects WHERE tenant_id = $1 AND id = $2", tenant_id, project_id
            )
        return Project(**dict(row.items())) if row else None

    async def create_user(self, tenant_id: str, name: str) -> User:
        u = User(new_id("usr_"), tenant_id, check_name(name, "user"))
        async with self._db.tenant_tx(tenant_id) as c:
            try:
                await c.execute(
                    "INSERT INTO users (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)",
                    u.id, tenant_id, u.name, time.time(),
                )
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc) from None
        return u

    async def get_user(self, tenant_id: str, user_id: str) -> User | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow("SELECT id, tenant_id, name FROM users WHERE tenant_id = $1 AND id = $2", tenant_id, user_id)
        return User(**dict(row.items())) if row else None

    async def list_projects(self, tenant_id: str) -> list[Project]:
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch("SELECT id, tenant_id, name FROM projects WHERE tenant_id = $1 ORDER BY created_at, id",
                                 tenant_id)
        return [Project(**dict(r.items())) for r in rows]

    async def list_users(self, tenant_id: str) -> list[User]:
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch("SELECT id, tenant_id, name FROM users WHERE tenant_id = $1 ORDER BY created_at, id",
                                 tenant_id)
        return [User(**dict(r.items())) for r in rows]

    async def add_member(self, tenant_id: str, project_id: str, user_id: str) -> bool:
        async with self._db.tenant_tx(tenant_id) as c:
            try:
                status = await c.execute(
                    "INSERT INTO project_members (tenant_id, project_id, user_id, added_at) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT DO NOTHING", tenant_id, project_id, user_id, time.time(),
                )
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc, "project or user") from None
        return status == "INSERT 0 1"

    async def remove_member(self, tenant_id: str, project_id: str, user_id: str) -> bool:
        async with self._db.tenant_tx(tenant_id) as c:
            status = await c.execute(
                "DELETE FROM project_members WHERE tenant_id = $1 AND project_id = $2 AND user_id = $3",
                tenant_id, project_id, user_id,
            )
        return status == "DELETE 1"

    async def list_members(self, tenant_id: str, project_id: str) -> list[str]:
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(
                "SELECT user_id FROM project_members WHERE tenant_id = $1 AND project_id = $2 ORDER BY added_at, user_id",
                tenant_id, project_id,
            )
        return [r[0] for r in rows]

    async def is_member(self, tenant_id: str, project_id: str, user_id: str) -> bool:
        async with self._db.tenant_tx(tenant_id) as c:
            return await c.fetchval(
                "SELECT EXISTS (SELECT 1 FROM project_members WHERE tenant_id = $1 AND project_id = $2 AND user_id = $3)",
                tenant_id, project_id, user_id,
            )

    async def create_key(
        self, tenant_id: str, *, key_id: str, key_hash: str, prefix: str, role: str,
        user_id: str | None = None, project_id: str | None = None,
    ) -> ApiKey:
        if role not in ROLES:
            raise StockadeError("input.invalid", f"role must be one of {', '.join(ROLES)}")
        key = ApiKey(key_id, tenant_id, role, prefix, user_id, project_id, time.time())
        async with self._db.tenant_tx(tenant_id) as c:
            try:
                await c.execute(
                    "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, role, user_id, project_id, created_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    key.id, tenant_id, key_hash, prefix, role, user_id, project_id, key.created_at,
                )
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc, "tenant, user or project") from None
        return key

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """The key with this hash in any tenant, revoked or not (the caller checks ``revoked_at``)."""
        async with self._db.system_tx() as c:
            row = await c.fetchrow(f"SELECT {APIKEY_COLS} FROM api_keys WHERE key_hash = $1", key_hash)
        return to_apikey(row) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(f"SELECT {APIKEY_COLS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id", tenant_id)
        return [to_apikey(r) for r in rows]

    async def revoke_key(self, tenant_id: str, key_id: str) -> bool:
        async with self._db.tenant_tx(tenant_id) as c:
            status = await c.execute(
                "UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
                tenant_id, key_id, time.time(),
            )
        return status == "UPDATE 1"
