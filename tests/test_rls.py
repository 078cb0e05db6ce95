"""PostgreSQL row-level security: a tenant transaction sees and writes only its tenant's rows,
even when a query forgets its ``WHERE tenant_id`` (invariant 8, enforced a second time)."""

from __future__ import annotations

import secrets
import time

import asyncpg
import pytest

from supervisor.ids import new_id
from supervisor.stores.postgres import (
    PgApprovalStore,
    PgAuditLog,
    PgBundleStore,
    PgIdempotencyStore,
    PgPolicyStore,
    PgRunStore,
    PgTenantStore,
    open_postgres,
)
from supervisor.stores.records import Approval, Run

pytestmark = pytest.mark.pg


def _seal(prev: str, seq: int, fields: dict, prev_mac: str | None = None) -> tuple[str, str]:
    return f"{seq:064x}", "mac"


async def _populate(db, tenant_id: str) -> dict[str, str]:
    tenants = PgTenantStore(db)
    user = await tenants.create_user(tenant_id, "ada")
    project = await tenants.create_project(tenant_id, "web")
    await tenants.add_member(tenant_id, project.id, user.id)
    await tenants.create_key(tenant_id, key_id=new_id("key_"), key_hash=secrets.token_hex(16), prefix="sk",
                             role="admin", user_id=user.id)
    run = Run(new_id("run_"), tenant_id, "echo", "1", "hi", "queued", time.time())
    await PgRunStore(db).create_run(run)
    await PgRunStore(db).append_event(tenant_id, run.id, "run.started", {})
    await PgAuditLog(db).append(tenant_id, {"kind": "tool.allowed", "run_id": run.id}, _seal)
    await PgApprovalStore(db).create(Approval(new_id("apr_"), tenant_id, run.id, "echo", "h", {}, None, None,
                                              "pending", time.time(), time.time() + 60))
    await PgIdempotencyStore(db).begin(tenant_id, "k", time.time())
    await PgPolicyStore(db).put(tenant_id, "rules: []", "v1")
    await PgBundleStore(db).put_version(tenant_id, "mine", "1", "sha256:" + tenant_id, {})
    return {"run": run.id, "user": user.id, "project": project.id}


@pytest.fixture
async def world(pg_url):
    db = await open_postgres(pg_url, min_size=1, max_size=4)
    tenants = PgTenantStore(db)
    a = (await tenants.create_tenant(f"rls-a-{secrets.token_hex(4)}")).id
    b = (await tenants.create_tenant(f"rls-b-{secrets.token_hex(4)}")).id
    objs = {a: await _populate(db, a), b: await _populate(db, b)}
    await PgBundleStore(db).put_version(None, f"plat-{a}", "1", "sha256:plat", {})
    try:
        yield db, a, b, objs
    finally:
        await db.close()


TABLES = ["projects", "users", "api_keys", "runs", "run_events", "audit_log", "audit_heads", "approvals",
          "idempotency_keys", "policies", "project_members"]


@pytest.mark.parametrize("table", TABLES)
async def test_unfiltered_select_sees_only_own_rows(world, table):
    db, a, b, _ = world
    async with db.tenant_tx(a) as c:
        seen = {r[0] for r in await c.fetch(f"SELECT tenant_id FROM {table}")}  # no WHERE on purpose
    assert seen == {a}
    async with db.system_tx() as c:  # the rows of B are there
        assert await c.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", b) >= 1


async def test_tenants_and_bundles_visibility(world):
    db, a, b, _ = world
    async with db.tenant_tx(a) as c:
        assert [r[0] for r in await c.fetch("SELECT id FROM tenants")] == [a]
        owners = {r[0] for r in await c.fetch("SELECT tenant_id FROM bundle_versions")}
    assert owners == {a, None}  # own and platform bundles, never B's


async def test_unknown_tenant_sees_nothing(world):
    db, *_ = world
    async with db.tenant_tx("ten_nobody") as c:
        for table in TABLES:
            assert await c.fetchval(f"SELECT count(*) FROM {table}") == 0


INSERTS = {
    "runs": ("INSERT INTO runs (id, tenant_id, bundle, bundle_version, input, status, created_at)"
             " VALUES ($2, $1, 'echo', '1', 'x', 'queued', 0)", lambda o: [new_id("run_")]),
    "run_events": ("INSERT INTO run_events (tenant_id, run_id, seq, type, data, ts) VALUES ($1, $2, 99, 'x', '{}', 0)",
                   lambda o: [o["run"]]),
    "audit_log": ("INSERT INTO audit_log (tenant_id, seq, ts, kind, prev_hash, hash, mac)"
                  " VALUES ($1, 999, 0, 'forged', 'p', 'h', 'm')", lambda o: []),
    "approvals": ("INSERT INTO approvals (id, tenant_id, run_id, tool, args_hash, args, status, created_at, expires_at)"
                  " VALUES ($2, $1, 'r', 'echo', 'h', '{}', 'pending', 0, 1)", lambda o: [new_id("apr_")]),
    "api_keys": ("INSERT INTO api_keys (id, tenant_id, key_hash, prefix, role, created_at)"
                 " VALUES ($2, $1, $3, 'sk', 'admin', 0)", lambda o: [new_id("key_"), secrets.token_hex(16)]),
    # B's own project and user: only the row's tenant is wrong
    "project_members": ("INSERT INTO project_members (tenant_id, project_id, user_id, added_at) VALUES ($1, $2, $3, 0)",
                        lambda o: [o["project"], o["user"]]),
    "bundle_versions": ("INSERT INTO bundle_versions (tenant_id, name, version, digest, manifest, created_at)"
                        " VALUES ($1, 'evil', '1', 'd', '{}', 0)", lambda o: []),
}


@pytest.mark.parametrize("table", sorted(INSERTS))
async def test_insert_for_another_tenant_is_refused(world, table):
    db, a, b, objs = world
    sql, extra = INSERTS[table]
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with db.tenant_tx(a) as c:
            await c.execute(sql, b, *extra(objs[b]))


async def test_platform_bundles_cannot_be_written_by_a_tenant(world):
    db, a, *_ = world
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with db.tenant_tx(a) as c:
            await c.execute("INSERT INTO bundle_versions (tenant_id, name, version, digest, manifest, created_at)"
                            " VALUES (NULL, 'evil', '1', 'd', '{}', 0)")
    async with db.tenant_tx(a) as c:
        assert await c.execute("DELETE FROM bundle_versions WHERE tenant_id IS NULL") == "DELETE 0"


async def test_update_and_delete_of_other_tenants_rows_touch_nothing(world):
    db, a, b, objs = world
    async with db.tenant_tx(a) as c:
        assert await c.execute("UPDATE runs SET status = 'canceled' WHERE id = $1", objs[b]["run"]) == "UPDATE 0"
        assert await c.execute("DELETE FROM approvals WHERE tenant_id = $1", b) == "DELETE 0"
        assert await c.execute("UPDATE api_keys SET revoked_at = 1") != "UPDATE 0"  # its own keys only
    assert (await PgRunStore(db).get_run(b, objs[b]["run"])).status == "queued"
    assert all(k.revoked_at is None for k in await PgTenantStore(db).list_keys(b))
    async with db.tenant_tx(a) as c:  # moving a row to another tenant is refused too
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await c.execute("UPDATE users SET tenant_id = $1", b)


async def test_settings_do_not_leak_to_the_next_transaction(world):
    db, a, *_ = world
    async with db.tenant_tx(a):
        pass
    async with db.acquire() as c:
        assert await c.fetchval("SELECT current_user") != "stockade_app"
        assert (await c.fetchval("SELECT current_setting('stockade.tenant_id', true)")) in (None, "")


async def test_every_tenant_scoped_table_forces_rls(world):
    """Catches a future table (ledger, knowledge base, ...) that forgets stockade_tenant_rls()."""
    db, *_ = world
    async with db.acquire() as c:
        rows = await c.fetch(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
            "       (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute att ON att.attrelid = c.oid AND att.attname = 'tenant_id' AND NOT att.attisdropped"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        )
    assert {r["relname"] for r in rows} >= set(TABLES) | {"bundle_versions"}
    missing = [r["relname"] for r in rows if not (r["relrowsecurity"] and r["relforcerowsecurity"] and r["policies"])]
    assert missing == [], f"tables with tenant_id but without forced RLS: {missing}"


async def test_tenant_id_is_a_value_never_sql(world):
    db, a, *_ = world
    hostile = "x', true), set_config('role', 'stockade_system'"
    async with db.tenant_tx(hostile) as c:
        assert await c.fetchval("SELECT current_user") == "stockade_app"
        assert await c.fetchval("SELECT current_setting('stockade.tenant_id', true)") == hostile
        assert await c.fetchval("SELECT count(*) FROM runs") == 0
