"""TenantStore contract: SQLite and PostgreSQL behave the same."""

from __future__ import annotations

import secrets

import pytest

from supervisor.errors import StockadeError


def _name() -> str:
    return f"acme-{secrets.token_hex(5)}"


async def test_create_and_get_tenant(sql_db):
    store = sql_db.tenant_store()
    name = _name()
    t = await store.create_tenant(name)
    assert t.id.startswith("ten_") and t.name == name and t.created_at > 0
    assert await store.get_tenant(t.id) == t
    assert await store.get_tenant_by_name(name) == t
    assert await store.get_tenant("ten_missing") is None
    assert await store.get_tenant_by_name("no-such-" + name) is None
    assert t in await store.list_tenants()


async def test_duplicate_tenant_name_is_a_conflict_and_writes_nothing(sql_db):
    store = sql_db.tenant_store()
    name = _name()
    await store.create_tenant(name)
    before = len(await store.list_tenants())
    with pytest.raises(StockadeError) as err:
        await store.create_tenant(name)
    assert err.value.code == "conflict"
    assert len(await store.list_tenants()) == before


async def test_empty_tenant_name_is_invalid(sql_db):
    with pytest.raises(StockadeError) as err:
        await sql_db.tenant_store().create_tenant("  ")
    assert err.value.code == "input.invalid"


async def test_projects_and_users_are_scoped_by_tenant(sql_db):
    store = sql_db.tenant_store()
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    p = await store.create_project(a, "web")
    u = await store.create_user(a, "ada")
    assert p.id.startswith("prj_") and u.id.startswith("usr_")
    assert await store.get_project(a, p.id) == p
    assert await store.get_user(a, u.id) == u
    assert await store.get_project(b, p.id) is None
    assert await store.get_user(b, u.id) is None


async def test_project_of_unknown_tenant_is_not_found(sql_db):
    with pytest.raises(StockadeError) as err:
        await sql_db.tenant_store().create_project("ten_nope", "web")
    assert err.value.code == "not_found"


async def test_keys_find_by_hash_across_tenants_list_and_revoke(sql_db):
    store = sql_db.tenant_store()
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    u = await store.create_user(a, "ada")
    h = secrets.token_hex(32)
    k = await store.create_key(a, key_id="key_" + secrets.token_hex(6), key_hash=h, prefix="sk_abc", role="admin",
                               user_id=u.id)
    assert k.tenant_id == a and k.user_id == u.id and k.revoked_at is None
    found = await store.find_key(h)
    assert found == k
    assert await store.find_key("nope") is None
    assert await store.list_keys(a) == [k]
    assert await store.list_keys(b) == []
    assert await store.revoke_key(b, k.id) is False  # another tenant cannot revoke it
    assert await store.revoke_key(a, k.id) is True
    assert await store.revoke_key(a, k.id) is False  # only once
    revoked = await store.find_key(h)
    assert revoked is not None and revoked.revoked_at is not None


async def test_key_validation(sql_db):
    store = sql_db.tenant_store()
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    with pytest.raises(StockadeError) as err:
        await store.create_key(a, key_id="key_x1" + secrets.token_hex(4), key_hash=secrets.token_hex(8),
                               prefix="sk", role="root")
    assert err.value.code == "input.invalid"
    # a key cannot name a user of another tenant
    other_user = await store.create_user(b, "bob")
    with pytest.raises(StockadeError) as err:
        await store.create_key(a, key_id="key_x2" + secrets.token_hex(4), key_hash=secrets.token_hex(8),
                               prefix="sk", role="member", user_id=other_user.id)
    assert err.value.code == "not_found"
    # the key hash is unique
    h = secrets.token_hex(8)
    await store.create_key(a, key_id="key_x3" + secrets.token_hex(4), key_hash=h, prefix="sk", role="viewer")
    with pytest.raises(StockadeError) as err:
        await store.create_key(b, key_id="key_x4" + secrets.token_hex(4), key_hash=h, prefix="sk", role="viewer")
    assert err.value.code == "conflict"
    assert await store.list_keys(b) == []
